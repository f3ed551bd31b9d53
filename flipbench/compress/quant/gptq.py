"""GPTQ (Frantar et al. 2022, arXiv 2210.17323) for one linear layer, with TACQ's keep mask.

Quantizes W (rows, cols) column by column to minimise ||XWᵀ − XQᵀ||² over the calibration inputs X,
spreading each column's rounding error onto the columns not yet quantized through the inverse Hessian
H⁻¹ of that objective (H = 2/N Σ x xᵀ), in its upper Cholesky form so that one sweep suffices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from flipbench.compress.families import Family, block_linears
from flipbench.compress.hessian import Hessian, blocked_sweep, inverse_cholesky, solve_layer
from flipbench.compress.layerwise import LayerInputs, layer_by_layer
from flipbench.compress.quant.grid import GridSpec, fit_masked, quantize, rtn, rtn_grid_record


@dataclass(frozen=True)
class GPTQSettings:
    grid: GridSpec
    group_size: int = -1
    act_order: bool = False
    static_groups: bool = False
    damp: float = 0.01
    block_size: int = 128
    hessian_dtype: str = "float64"  # H summed and factored in it; the column sweep runs in float32


class GPTQ(Hessian):
    """Collect H from a linear layer's inputs with add_batch (hessian.Hessian), then quantize its weights
    with solve."""

    def __init__(self, columns: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__(columns, device, dtype)
        self._factor = None  # (key of H and settings, column order, H⁻¹ upper Cholesky, damp retries)
        self.grid = None  # the last solve's grids (see grid_record), for a packed export

    def add_batch(self, X: torch.Tensor) -> None:
        self._factor = None  # a new H needs a new factor; free the old one now
        super().add_batch(X)

    def solve(
        self, W: torch.Tensor, settings: GPTQSettings, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, int]:
        """Quantize W (rows, cols); returns (Q (rows, cols) in fp32, damp retries).

        keep (bool, like W), for TACQ: those entries are left out of the grid fit, never quantized, add no
        error, and end with their GPTQ-updated 16-bit value.
        """
        s, maxq = settings, settings.grid.maxq
        cols = W.shape[1]
        W = W.to(self.H.device, torch.float32).clone()  # (rows, cols)
        keep = torch.zeros_like(W, dtype=torch.bool) if keep is None else keep.to(W.device).clone()

        diag = torch.diag(self.H).clone()
        dead = diag == 0  # inputs that were always 0: any weight is exact, so use 0
        diag[dead] = 1
        W[:, dead] = 0

        group = cols if s.group_size == -1 else s.group_size
        if s.group_size == -1 or s.static_groups:
            params = [fit_masked(W[:, g : g + group], s.grid, keep[:, g : g + group]) for g in range(0, cols, group)]

        # A second solve on the same H (TACQ's masked pass) reuses the O(cols³) factorization and its order.
        key = (s.damp, s.act_order, self.H.data_ptr(), self.H._version)
        if self._factor is None or self._factor[0] != key:
            self._factor = None  # free the old factor before making the new one
            perm = torch.arange(cols, device=W.device)
            if s.act_order:  # largest inputs first, while there are most columns left to absorb error
                perm = torch.argsort(diag, descending=True)
            H = self.H  # (cols, cols); copied only where dead inputs or act_order change it
            if dead.any() or s.act_order:
                H = H.clone()
                H[dead, dead] = 1
                H = H[perm][:, perm] if s.act_order else H
            U, retries = inverse_cholesky(H, s.damp)
            self._factor = (key, perm, U.to(torch.float32), retries)
            del H
        _, perm, Hinv, retries = self._factor  # Hinv: (cols, cols), upper triangular
        if s.act_order:
            W, keep = W[:, perm], keep[:, perm]
        group_of = (perm // group).tolist()  # original group of each swept column (static / per-channel grids)
        def column(i1: int, i: int, W1: torch.Tensor, Hinv1: torch.Tensor) -> torch.Tensor:
            nonlocal current
            col, i2 = i1 + i, i1 + W1.shape[1]
            if s.group_size != -1 and not s.static_groups and col % group == 0:
                # dynamic groups: fit on the current, error-updated values of the next `group` columns (fewer at
                # the row's end: the last group is narrower when group does not divide cols)
                ahead = W1[:, i : i + group]
                ahead = torch.cat([ahead, W[:, i2 : i2 + group - ahead.shape[1]]], dim=1)
                current = fit_masked(ahead, s.grid, keep[:, col : col + group])
                dynamic.append(current)
            elif s.group_size == -1 or s.static_groups:
                current = params[group_of[col]]
            w, k = W1[:, i], keep[:, col]  # (rows,), (rows,)
            return torch.where(k, w, quantize(w[:, None], *current, maxq).flatten())  # kept: no error

        current, dynamic = None, []  # dynamic groups' (scale, zero), in sweep order
        Q = blocked_sweep(W, Hinv, s.block_size, column)

        if s.act_order:
            Q = Q[:, torch.argsort(perm)]
        self.grid = grid_record(params if not dynamic else dynamic, perm, group, bool(dynamic))
        return Q, retries


def grid_record(fitted: list, perm: torch.Tensor, group: int, dynamic: bool) -> dict:
    """What a packed export needs: scale and zero (rows, n_groups) and g_idx (cols,), the group of each
    original column. Dynamic groups are numbered in sweep order, so under act_order g_idx is permuted."""
    g_idx = torch.empty_like(perm)
    g_idx[perm] = torch.arange(len(perm), device=perm.device) // group if dynamic else perm // group
    return {"scale": torch.cat([sc for sc, _ in fitted], 1).cpu(), "zero": torch.cat([z for _, z in fitted], 1).cpu(),
            "g_idx": g_idx.cpu()}


def gptq_layer(
    layer: nn.Module,
    family: Family | None,
    inputs: LayerInputs,
    settings: GPTQSettings,
    true_sequential: bool = True,
    keep: dict[str, torch.Tensor] | None = None,
    grids: dict | None = None,
) -> tuple[dict[str, int], list[str]]:
    """Quantize one decoder layer in place; returns (damp retries per linear, linears no calibration token
    reached), with names relative to the layer. grids, when given, receives relative name -> grid record.

    True-sequential: group k is quantized before group k+1's Hessians are collected, so later linears see
    the inputs the quantized layer will really give them; the groups come from a traced forward. A weight
    with no inputs (an expert no token was routed to) is quantized without data: RTN on the same grid.
    keep: relative name -> TACQ mask (out, in).
    """
    def mask(name: str) -> torch.Tensor | None:
        return None if keep is None else keep[name]

    def solve(name: str, solver: GPTQ, W: torch.Tensor) -> tuple[torch.Tensor, int]:
        Q, retries = solver.solve(W, settings, mask(name))
        if grids is not None:
            grids[name] = solver.grid
        return Q, retries

    def without_data(name: str, W: torch.Tensor) -> torch.Tensor:
        if grids is not None:
            grids[name] = rtn_grid_record(W, settings.grid, settings.group_size, mask(name))
        return rtn(W, settings.grid, settings.group_size, mask(name))

    def make(columns: int, device) -> GPTQ:
        return GPTQ(columns, device, getattr(torch, settings.hessian_dtype))

    return solve_layer(layer, inputs, true_sequential, make, solve, without_data)


def gptq_model(
    model: nn.Module,
    calib: torch.Tensor,
    settings: GPTQSettings,
    device,
    true_sequential: bool = True,
    keep: dict[str, torch.Tensor] | None = None,
    progress: Callable[[str], None] | None = None,
    label: str = "gptq layer",
    grids: dict | None = None,
) -> tuple[dict[str, int], list[str]]:
    """GPTQ on every decoder layer, in place; returns (damp retries per linear (full names) where > 0,
    full names of the linears no calibration token reached, quantized with RTN).
    keep: full linear name -> TACQ mask (out, in). grids: filled with full linear name -> grid record."""
    retries, unreached = {}, []
    for index, layer, family, inputs in layer_by_layer(model, calib, device, progress, label):
        prefix = f"{family.layers}.{index}."
        layer_keep = None if keep is None else {name: keep[prefix + name] for name in block_linears(layer)}
        layer_grids = None if grids is None else {}
        layer_retries, layer_unreached = gptq_layer(layer, family, inputs, settings, true_sequential, layer_keep,
                                                    layer_grids)
        retries.update({prefix + name: count for name, count in layer_retries.items() if count})
        unreached += [prefix + name for name in layer_unreached]
        if grids is not None:
            grids.update({prefix + name: record for name, record in layer_grids.items()})
    return retries, unreached
