"""SparseGPT (Frantar & Alistarh 2023, arXiv 2301.00774): OBS pruning with weight reconstruction.

Like GPTQ it sweeps W (rows, cols) column by column through the upper Cholesky factor of H⁻¹ (H = 2/N Σ x xᵀ,
the same Hessian, damping and factorization as GPTQ: flipbench.compress.hessian), but a column's "rounding"
sets the masked weights to 0 and the error (w − q)/[H⁻¹]_ii is spread onto the columns not yet swept, so the
surviving weights compensate for the removed ones. The mask is chosen adaptively, one block of block_size
columns at a time, from the OBS saliency w²/[H⁻¹]²_jj of the block's current (already updated) weights:
the block's lowest ⌊rows·b·s⌋ for unstructured sparsity, the m − n lowest of every m columns for N:M.
With a grid, the surviving weights are also quantized in the same sweep (the paper's joint 2:4 + 4-bit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from flipbench.compress.hessian import Hessian, inverse_cholesky, solve_layer, without_dead_inputs
from flipbench.compress.layerwise import layer_by_layer
from flipbench.compress.prune.masks import Pattern, lowest, mask_for
from flipbench.compress.quant.grid import GridSpec, fit, quantize, rtn


@dataclass(frozen=True)
class SparseGPTSettings:
    sparsity: float = 0.5  # unstructured share of zeros (ignored for N:M: 1 − n/m)
    pattern: Pattern = field(default_factory=Pattern)
    block_size: int = 128  # columns per adaptive-mask block (a multiple of m for N:M)
    damp: float = 0.01
    grid: GridSpec | None = None  # joint quantization of the surviving weights, one grid per output row


class SparseGPT(Hessian):
    """Collect H with add_batch (hessian.Hessian), then prune (and optionally quantize) W with solve."""

    def solve(self, W: torch.Tensor, s: SparseGPTSettings) -> tuple[torch.Tensor, int]:
        """Returns (Ŵ (rows, cols) fp32 with the pruned weights exactly 0, damp retries)."""
        H, W = without_dead_inputs(self.H, W.to(self.H.device))  # W: fp32 copy (rows, cols)
        rows, cols = W.shape
        if s.grid is not None:  # per-row grid on the dense weights, as the paper's joint mode
            scale, zero = fit(W, s.grid)  # (rows, 1) each
        Hinv, retries = inverse_cholesky(H, s.damp)  # (cols, cols) upper triangular
        del H
        n, m = s.pattern.n, s.pattern.m
        Q = torch.zeros_like(W)
        for i1 in range(0, cols, s.block_size):
            i2 = min(i1 + s.block_size, cols)
            W1 = W[:, i1:i2].clone()  # (rows, b): updated in place as the block is swept
            Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            d = torch.diag(Hinv1)  # (b,)
            if s.pattern.structured:
                mask1 = torch.zeros_like(W1, dtype=torch.bool)  # filled m columns at a time below
            else:  # OBS saliency of the whole block, pruned block-wide (adaptive per block, not per row)
                saliency = (W1**2 / d[None, :] ** 2).flatten()[None, :]  # (1, rows·b)
                mask1 = lowest(saliency, int(saliency.numel() * s.sparsity)).reshape(W1.shape)
            for i in range(i2 - i1):
                if s.pattern.structured and i % m == 0:
                    saliency = W1[:, i : i + m] ** 2 / d[None, i : i + m] ** 2  # (rows, m), current weights
                    mask1[:, i : i + m] = lowest(saliency, m - n)
                w = W1[:, i]  # (rows,)
                q = w.masked_fill(mask1[:, i], 0)
                if s.grid is not None:  # 0 is on every grid, so pruned weights stay exactly 0
                    q = quantize(q[:, None], scale, zero, s.grid.maxq).flatten()
                Q1[:, i] = q
                err1 = (w - q) / Hinv1[i, i]
                W1[:, i:] -= err1[:, None] @ Hinv1[i, i:][None, :]
                Err1[:, i] = err1
            Q[:, i1:i2] = Q1
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # the block's error, pushed to every later column at once
        return Q, retries


def _without_data(W: torch.Tensor, s: SparseGPTSettings) -> torch.Tensor:
    """A weight no calibration token reached (an expert the router never picked): magnitude mask, RTN."""
    W = W.float().masked_fill(mask_for(W.abs(), s.sparsity, s.pattern), 0)
    return W if s.grid is None else rtn(W, s.grid)


def sparsegpt_model(
    model: nn.Module,
    calib: torch.Tensor,
    settings: SparseGPTSettings,
    device,
    true_sequential: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, int], list[str]]:
    """SparseGPT on every decoder linear, in place; returns (damp retries per linear (full names) where > 0,
    full names of the weights no calibration token reached, pruned by magnitude instead)."""
    retries, unreached = {}, []
    for index, layer, family, inputs in layer_by_layer(model, calib, device, progress, "sparsegpt layer"):
        prefix = f"{family.layers}.{index}."
        layer_retries, layer_unreached = solve_layer(
            layer, inputs, true_sequential, SparseGPT,
            lambda name, solver, W: solver.solve(W, settings), lambda name, W: _without_data(W, settings))
        retries.update({prefix + name: n for name, n in layer_retries.items() if n})
        unreached += [prefix + name for name in layer_unreached]
    return retries, unreached
