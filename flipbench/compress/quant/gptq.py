"""GPTQ (Frantar et al. 2022, arXiv 2210.17323) for one linear layer, with TACQ's keep mask.

Quantizes W (rows, cols) column by column to minimise ||XWᵀ − XQᵀ||² over the calibration inputs X,
spreading each column's rounding error onto the columns not yet quantized through the inverse Hessian
H⁻¹ of that objective (H = 2/N Σ x xᵀ), in its upper Cholesky form so that one sweep suffices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from flipbench.compress.families import Family, block_linears, in_features, set_weight_matrix, weight_matrix
from flipbench.compress.layerwise import (
    LayerInputs,
    collect_inputs,
    layer_by_layer,
    run_layer,
    sequential_groups,
)
from flipbench.compress.quant.grid import GridSpec, fit_masked, quantize, rtn, rtn_grid_record

MAX_DAMP_RETRIES = 6  # damp × 10 per retry: 0.01·mean(diag H) reaches 10⁴·mean(diag H)


@dataclass(frozen=True)
class GPTQSettings:
    grid: GridSpec
    group_size: int = -1
    act_order: bool = False
    static_groups: bool = False
    damp: float = 0.01
    block_size: int = 128


class GPTQ:
    """Collect H from a linear layer's inputs with add_batch, then quantize its weights with solve."""

    def __init__(self, columns: int, device: torch.device | str = "cpu"):
        self.H = torch.zeros(columns, columns, dtype=torch.float32, device=device)  # (cols, cols)
        self.nsamples = 0
        self._factor = None  # (key of H and settings, column order, H⁻¹ upper Cholesky, damp retries)
        self.grid = None  # the last solve's grids (see grid_record), for a packed export

    def add_batch(self, X: torch.Tensor) -> None:
        """X (..., cols): one batch of inputs; H stays the running 2/N Σ x xᵀ."""
        X = X.reshape(-1, X.shape[-1]).to(self.H.device, torch.float32)  # (n, cols)
        n = X.shape[0]
        self._factor = None
        self.H *= self.nsamples / (self.nsamples + n)
        self.nsamples += n
        X = math.sqrt(2 / self.nsamples) * X
        self.H += X.t() @ X

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
            self._factor = (key, perm, *_inverse_cholesky(H, s.damp))
            del H
        _, perm, Hinv, retries = self._factor  # Hinv: (cols, cols), upper triangular
        if s.act_order:
            W, keep = W[:, perm], keep[:, perm]
        group_of = (perm // group).tolist()  # original group of each swept column (static / per-channel grids)
        dynamic = []  # dynamic groups' (scale, zero), in sweep order
        Q = torch.zeros_like(W)
        for i1 in range(0, cols, s.block_size):
            i2 = min(i1 + s.block_size, cols)
            W1 = W[:, i1:i2].clone()  # (rows, b): updated in place as the block is swept
            Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            for i in range(i2 - i1):
                col = i1 + i
                if s.group_size != -1 and not s.static_groups and col % group == 0:
                    # dynamic groups: fit on the current, error-updated values of the next `group` columns (fewer at
                    # the row's end: the last group is narrower when group does not divide cols)
                    ahead = W1[:, i : i + group]
                    ahead = torch.cat([ahead, W[:, i2 : i2 + group - ahead.shape[1]]], dim=1)
                    current = fit_masked(ahead, s.grid, keep[:, col : col + group])
                    dynamic.append(current)
                elif s.group_size == -1 or s.static_groups:
                    current = params[group_of[col]]
                w, d, k = W1[:, i], Hinv1[i, i], keep[:, col]  # (rows,), scalar, (rows,)
                q = torch.where(k, w, quantize(w[:, None], *current, maxq).flatten())
                Q1[:, i] = q
                err1 = (w - q) / d  # 0 on kept entries
                W1[:, i:] -= err1[:, None] @ Hinv1[i, i:][None, :]
                Err1[:, i] = err1
            Q[:, i1:i2] = Q1
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # the block's error, pushed to every later column at once

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


def _inverse_cholesky(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, int]:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = damp·mean(diag H), raising λ ×10 until it factors."""
    mean_diag = torch.diag(H).mean().abs().clamp(min=1e-8)
    # Memory: at most two (cols, cols) matrices beside H at a time; for an MLP's down projection these are
    # the largest tensors GPTQ makes.
    for retry in range(MAX_DAMP_RETRIES + 1):
        damped = H.clone()
        damped.diagonal().add_(damp * 10**retry * mean_diag)
        L, info = torch.linalg.cholesky_ex(damped)
        del damped
        if info == 0:
            inverse = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if info == 0 and torch.isfinite(U).all():
                return U, retry
    raise ValueError(
        f"the Hessian is not positive definite even with damp {damp * 10**MAX_DAMP_RETRIES:g}·mean(diag H); "
        "check the calibration inputs for NaN/inf"
    )


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
    targets = block_linears(layer)
    stages = sequential_groups(layer, inputs) if true_sequential else [list(targets)]
    retries, unreached = {}, []
    for names in stages:
        device = weight_matrix(targets[names[0]]).device
        solvers = {name: GPTQ(in_features(targets[name]), device) for name in names}
        with collect_inputs(layer, names, lambda name, X: solvers[name].add_batch(X)):
            run_layer(layer, inputs)
        for name in names:
            module, mask = targets[name], None if keep is None else keep[name]
            solver = solvers.pop(name)  # its Hessian and factor are freed as soon as this linear is done
            W = weight_matrix(module)
            if solver.nsamples == 0:
                Q, retries[name] = rtn(W, settings.grid, settings.group_size, mask), 0
                unreached.append(name)
                record = rtn_grid_record(W, settings.grid, settings.group_size, mask)
            else:
                Q, retries[name] = solver.solve(W, settings, mask)
                record = solver.grid
            if grids is not None:
                grids[name] = record
            set_weight_matrix(module, None, Q)
            del solver, Q
    return retries, unreached


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
