"""Wanda (Sun et al. 2023, arXiv 2306.11695): prune by |W_ij|·||X_j||₂, compared within each output row.

X_j is the j-th input feature of the linear over every calibration token, so a small weight on a large
activation survives where magnitude pruning would drop it. Layers are pruned one at a time and the next
layer's inputs come from the pruned ones (as in the paper); within a layer, true-sequential groups see the
inputs the already-pruned linears give them. No weight is updated: only the mask differs from magnitude.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from flipbench.compress.hessian import ColumnNorms, solve_layer
from flipbench.compress.layerwise import layer_by_layer
from flipbench.compress.prune.masks import Pattern, mask_for


def wanda_scores(W: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| · ||X_j||₂ for W (out, in) and sq_norms = ||X_j||₂² (in,)."""
    return W.abs().float() * sq_norms.sqrt()[None, :]


def wanda_model(
    model: nn.Module,
    calib: torch.Tensor,
    sparsity: float,
    pattern: Pattern,
    device,
    true_sequential: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Wanda on every decoder linear, in place; calib (n_samples, seq_len) token ids. The layer loop is the
    Hessian methods' (:func:`solve_layer`) with ||X_j||₂² collected in place of H. Returns the full names of the
    weights no calibration token reached (MoE experts the router never picked), pruned by magnitude instead."""

    def solve(name: str, norms: ColumnNorms, W: torch.Tensor) -> tuple[torch.Tensor, int]:
        return W.masked_fill(mask_for(wanda_scores(W, norms.sq_norms), sparsity, pattern), 0), 0

    def without_data(name: str, W: torch.Tensor) -> torch.Tensor:
        # an expert no calibration token reached has no norms: its magnitudes decide alone
        return W.masked_fill(mask_for(W.abs(), sparsity, pattern), 0)

    unreached = []
    for index, layer, family, inputs in layer_by_layer(model, calib, device, progress, "wanda layer"):
        _, layer_unreached = solve_layer(layer, inputs, true_sequential, ColumnNorms, solve, without_data)
        unreached += [f"{family.layers}.{index}.{name}" for name in layer_unreached]
    return unreached
