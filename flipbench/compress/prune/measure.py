"""What pruning left, measured on the weights: zeros counted, parameters kept, bytes under a storage format.

Storage formats for a pruned linear of shape (rows, cols) with k non-zero weights of v bits each:
- ``dense``: rows·cols·v (zeros stored like any weight);
- ``bitmask`` (unstructured): one bit per position saying kept or not, plus k·v;
- ``n:m packed`` (semi-structured, as NVIDIA's 2:4 sparse tensor cores): n values of every m, each with a
  ⌈log₂ m⌉-bit index into its group: rows·cols·n/m·(v + ⌈log₂ m⌉).
Unstructured masks take the bitmask or dense, whichever is smaller. With SparseGPT's joint quantization v is
the grid's bits and every row adds a 16-bit scale and (asymmetric grids) a bits-wide zero. avg_bits is the
stored bits of the pruned linears per weight they had before pruning, so it lines up with the quantizers'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from flipbench.compress.families import block_linears, decoder_layers, family_of, weight_matrix, weight_param
from flipbench.compress.prune.masks import Pattern


@dataclass(frozen=True)
class Before:
    """The model's size before pruning: every parameter, and the decoder linears' weights per block."""

    n_params: int
    layer_weights: list[int]  # per decoder block, the weights of its linears


def _layer_linears(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    return [list(block_linears(layer).items()) for layer in decoder_layers(model)]


def before(model: nn.Module) -> Before:
    weights = [sum(weight_matrix(m).numel() for _, m in linears) for linears in _layer_linears(model)]
    return Before(sum(p.numel() for p in model.parameters()), weights)


def linear_bits(rows: int, cols: int, nonzero: int, value_bits: float, pattern: Pattern) -> tuple[float, str]:
    """(stored bits, format name) of one pruned linear under the cheapest format its pattern allows."""
    if pattern.structured:
        return rows * cols * pattern.n / pattern.m * (value_bits + math.ceil(math.log2(pattern.m))), f"{pattern} packed"
    dense, bitmask = rows * cols * value_bits, rows * cols + nonzero * value_bits
    return (bitmask, "bitmask") if bitmask < dense else (dense, "dense")


def prune_report(model: nn.Module, start: Before, kept: list[int], pattern: Pattern, bits: int | None,
                 sym: bool = False) -> dict:
    """Measured sparsity (overall, per decoder block by its original index, per linear), parameters kept,
    storage format, avg_bits and model_bytes. kept: the original index of each block still in the model."""
    family = family_of(model)
    per_layer = {str(index): 1.0 for index in range(len(start.layer_weights))}  # dropped blocks: all gone
    per_linear, stored_bits, nonzero_total, formats, linear_ids = {}, 0.0, 0, set(), set()
    for index, linears in zip(kept, _layer_linears(model)):
        layer_nonzero = 0
        for name, module in linears:
            W = weight_matrix(module)
            rows, cols = W.shape
            nonzero = int(W.count_nonzero())
            value_bits = 8 * W.element_size() if bits is None else bits
            size, fmt = linear_bits(rows, cols, nonzero, value_bits, pattern)
            stored_bits += size + (0 if bits is None else rows * (16 + (0 if sym else bits)))  # scale, zero
            formats.add(fmt)
            linear_ids.add(id(weight_param(module)))
            per_linear[f"{family.layers}.{index}.{name}"] = 1 - nonzero / W.numel()
            layer_nonzero += nonzero
        per_layer[str(index)] = 1 - layer_nonzero / start.layer_weights[index]
        nonzero_total += layer_nonzero
    original = sum(start.layer_weights)
    others = [p for p in model.parameters() if id(p) not in linear_ids]
    return {
        "pattern": str(pattern),
        "storage_format": " + ".join(sorted(formats)) or "dense",
        "sparsity_measured": {"overall": 1 - nonzero_total / original, "per_layer": per_layer,
                              "per_linear": per_linear},
        "n_params_kept": nonzero_total + sum(p.numel() for p in others),
        "params_kept": (nonzero_total + sum(p.numel() for p in others)) / start.n_params,
        "avg_bits": stored_bits / original,
        "model_bytes": int(round(stored_bits / 8 + sum(p.numel() * p.element_size() for p in others))),
        "decoder_layers": len(kept),
    }
