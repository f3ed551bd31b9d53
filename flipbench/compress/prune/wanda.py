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

from flipbench.compress.families import block_linears, in_features, weight_matrix
from flipbench.compress.hessian import ColumnNorms
from flipbench.compress.layerwise import collect_inputs, layer_by_layer, run_layer, sequential_groups
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
) -> None:
    """Wanda on every decoder linear, in place; calib (n_samples, seq_len) token ids."""
    for _, layer, _, inputs in layer_by_layer(model, calib, device, progress, "wanda layer"):
        targets = block_linears(layer)
        for names in sequential_groups(layer, inputs) if true_sequential else [list(targets)]:
            norms = {name: ColumnNorms(in_features(targets[name]), weight_matrix(targets[name]).device)
                     for name in names}
            with collect_inputs(layer, names, lambda name, X: norms[name].add_batch(X)):
                run_layer(layer, inputs)
            for name in names:
                W = weight_matrix(targets[name])  # view (out, in) of the stored weight
                # an expert no calibration token reached has no norms: its magnitudes decide alone
                score = wanda_scores(W, norms[name].sq_norms) if norms[name].nsamples else W.abs()
                W.masked_fill_(mask_for(score, sparsity, pattern), 0)
