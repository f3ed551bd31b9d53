"""Magnitude pruning: remove the weights of smallest |W|, data-free.

Compared within each output row (scope=row, the default, like Wanda's comparison group), within every
group of M input columns for N:M, or across all pruned linears of the model at once (scope=global).
"""

from __future__ import annotations

from torch import nn

from flipbench.compress.families import family_of, quantizable_linears, weight_matrix
from flipbench.compress.prune.masks import Pattern, global_masks, mask_for


def magnitude_model(model: nn.Module, sparsity: float, pattern: Pattern, scope: str = "row") -> None:
    """Zero the smallest-|W| weights of every decoder linear, in place (scope: row | global)."""
    family = family_of(model)
    weights = [weight_matrix(module, family) for module in quantizable_linears(model).values()]  # views (out, in)
    if scope == "global" and not pattern.structured:
        masks = global_masks([W.abs() for W in weights], sparsity)
    else:
        masks = [mask_for(W.abs(), sparsity, pattern) for W in weights]
    for W, mask in zip(weights, masks):
        W.masked_fill_(mask, 0)
