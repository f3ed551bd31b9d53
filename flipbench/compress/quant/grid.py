"""Uniform quantization grids and round-to-nearest.

A grid is one (scale, zero) pair per row of the tensor it was fitted on (a row is an output channel, or
one group of input columns of an output channel). Values are de-quantized at once: fake-quant.

- Asymmetric: the range [min(w, 0), max(w, 0)] (always including 0, so 0 is exactly representable) is
  split into 2^bits − 1 steps; zero = round(−xmin / scale).
- Symmetric (as the reference GPTQ ``Quantizer``): the range [−absmax, absmax] is split into 2^bits − 1
  steps, scale = 2·absmax / (2^bits − 1), and the zero point is the fixed (2^bits)/2, so it is not stored.
  Levels run from −(2^bits/2)·scale to (2^bits/2 − 1)·scale: −absmax − scale/2 … absmax − scale/2.
- MSE: shrink the range by factors p = 1, 0.99, …, 0.21 (80 steps, as the reference) and keep, per row, the
  p with the lowest error Σ|q − w|^norm (norm 2.4 as the reference; 2 is squared error). Clipping a few
  outliers can shrink the step for all the others.
- Ragged groups: a group size that does not divide the width leaves a narrower last group in each row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MSE_GRID_POINTS = 100
MSE_MAX_SHRINK = 0.8
MSE_NORM = 2.4  # the reference GPTQ/TACQ error norm


@dataclass(frozen=True)
class GridSpec:
    bits: int
    sym: bool = False
    mse: bool = False
    mse_norm: float = MSE_NORM  # the search minimises Σ|q − w|^mse_norm per row

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1


def quantize(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Round W onto the grid and de-quantize. scale, zero broadcast against W (e.g. (rows, 1))."""
    q = torch.clamp(torch.round(W / scale) + zero, 0, maxq)
    return scale * (q - zero)


def _minmax_params(xmin: torch.Tensor, xmax: torch.Tensor, spec: GridSpec) -> tuple[torch.Tensor, torch.Tensor]:
    if spec.sym:
        absmax = torch.maximum(-xmin, xmax)
        absmax = torch.where(absmax == 0, torch.ones_like(absmax), absmax)  # an all-zero row: any scale works
        return 2 * absmax / spec.maxq, torch.full_like(absmax, (spec.maxq + 1) / 2)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / spec.maxq
    return scale, torch.round(-xmin / scale)


def fit(W: torch.Tensor, spec: GridSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit one grid per row of W (rows, cols); returns scale, zero of shape (rows, 1)."""
    W = W.float()
    xmin = torch.clamp(W.min(dim=1).values, max=0)  # (rows,)
    xmax = torch.clamp(W.max(dim=1).values, min=0)
    scale, zero = _minmax_params(xmin, xmax, spec)
    if spec.mse:
        best = torch.full_like(xmin, float("inf"))
        for step in range(int(MSE_MAX_SHRINK * MSE_GRID_POINTS)):
            p = 1 - step / MSE_GRID_POINTS
            scale_p, zero_p = _minmax_params(p * xmin, p * xmax, spec)
            err = (quantize(W, scale_p[:, None], zero_p[:, None], spec.maxq) - W).abs().pow(spec.mse_norm).sum(dim=1)
            better = err < best
            best = torch.where(better, err, best)
            scale = torch.where(better, scale_p, scale)
            zero = torch.where(better, zero_p, zero)
    return scale[:, None], zero[:, None]


def fit_masked(W: torch.Tensor, spec: GridSpec, keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """fit, with kept entries (bool, like W) replaced by the row mean of the other entries first (TACQ):
    weights that stay in 16-bit must not stretch the grid of the ones that are quantized."""
    if keep is None or not keep.any():
        return fit(W, spec)
    W = W.float()
    others = (~keep).float()
    mean = (W * others).sum(dim=1, keepdim=True) / others.sum(dim=1, keepdim=True).clamp(min=1)
    return fit(torch.where(keep, mean, W), spec)


def rtn(W: torch.Tensor, spec: GridSpec, group_size: int = -1, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Round-to-nearest: W (rows, cols) onto per-row grids, or per group of group_size columns (the last
    group of a row is narrower when group_size does not divide cols). keep (bool, like W): entries left
    unquantized and out of the grid fit (TACQ)."""
    cols = W.shape[1]
    group = cols if group_size == -1 else group_size
    Wf = W.float()
    Q = torch.empty_like(Wf)
    for g in range(0, cols, group):  # (rows, ≤group) per step
        block = Wf[:, g : g + group]
        mask = None if keep is None else keep[:, g : g + group]
        Q[:, g : g + group] = quantize(block, *fit_masked(block, spec, mask), spec.maxq)
    if keep is not None:
        Q = torch.where(keep, Wf, Q)
    return Q.to(W.dtype)


def rtn_grid_record(W: torch.Tensor, spec: GridSpec, group_size: int = -1, keep: torch.Tensor | None = None) -> dict:
    """The grids rtn() fits on W (rows, cols), for a packed export: scale and zero (rows, n_groups) and
    g_idx (cols,), each column's group."""
    cols = W.shape[1]
    group = cols if group_size == -1 else group_size
    fitted = [fit_masked(W.float()[:, g : g + group], spec, None if keep is None else keep[:, g : g + group])
              for g in range(0, cols, group)]
    return {"scale": torch.cat([sc for sc, _ in fitted], 1).cpu(), "zero": torch.cat([z for _, z in fitted], 1).cpu(),
            "g_idx": torch.arange(cols) // group}
