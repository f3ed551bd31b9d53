"""SparseGPT (Frantar & Alistarh 2023, arXiv 2301.00774): OBS pruning with weight reconstruction.

Like GPTQ it sweeps W (rows, cols) column by column through the upper Cholesky factor of H⁻¹ (H = 2/N Σ x xᵀ;
the same Hessian, damping, factorization and blocked sweep as GPTQ: flipbench.compress.hessian), but a column's
"rounding" sets the masked weights to 0 and the error (w − q)/[H⁻¹]_ii is spread onto the columns not yet swept, so the
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

from flipbench.compress.hessian import Hessian, blocked_sweep, inverse_cholesky, solve_layer, without_dead_inputs
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
        if s.grid is not None:  # per-row grid on the dense weights, as the paper's joint mode
            scale, zero = fit(W, s.grid)  # (rows, 1) each
        Hinv, retries = inverse_cholesky(H, s.damp)  # (cols, cols) upper triangular
        del H
        n, m = s.pattern.n, s.pattern.m
        mask1 = None  # (rows, b) of the current block, True = pruned

        def column(i1: int, i: int, W1: torch.Tensor, Hinv1: torch.Tensor) -> torch.Tensor:
            nonlocal mask1
            d = torch.diag(Hinv1)  # (b,)
            if i == 0 and not s.pattern.structured:
                # OBS saliency w²/[H⁻¹]²_jj of the whole block, pruned block-wide (adaptive per block, not per row)
                saliency = (W1**2 / d[None, :] ** 2).flatten()[None, :]  # (1, rows·b)
                mask1 = lowest(saliency, int(saliency.numel() * s.sparsity)).reshape(W1.shape)
            elif i == 0:
                mask1 = torch.zeros_like(W1, dtype=torch.bool)  # filled m columns at a time below
            if s.pattern.structured and i % m == 0:
                saliency = W1[:, i : i + m] ** 2 / d[None, i : i + m] ** 2  # (rows, m), current weights
                mask1[:, i : i + m] = lowest(saliency, m - n)
            q = W1[:, i].masked_fill(mask1[:, i], 0)
            if s.grid is not None:  # 0 is on every grid, so pruned weights stay exactly 0
                q = quantize(q[:, None], scale, zero, s.grid.maxq).flatten()
            return q

        Q = blocked_sweep(W, Hinv, s.block_size, column)
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
