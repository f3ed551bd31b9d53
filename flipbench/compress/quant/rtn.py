"""RTN on a whole model: every quantizable linear's weights rounded onto its grid. No data."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from flipbench.compress.families import (
    block_linears,
    decoder_layers,
    family_of,
    quantizable_linears,
    set_weight_matrix,
    weight_matrix,
)
from flipbench.compress.placement import onload
from flipbench.compress.quant.grid import GridSpec, rtn


def rtn_model(
    model: nn.Module, spec: GridSpec, group_size: int, device, progress: Callable[[str], None] | None = None
) -> int:
    """Quantize in place, one linear at a time on device; returns the number of linears quantized."""
    family = family_of(model)
    blocks = decoder_layers(model, family)
    for index, block in enumerate(blocks):
        if progress:
            progress(f"rtn layer {index + 1}/{len(blocks)}")
        with onload(block, device):  # and back where it lives (a GPU, the CPU, offload storage)
            for module in block_linears(block).values():
                set_weight_matrix(module, family, rtn(weight_matrix(module), spec, group_size))  # W (out, in)
    return len(quantizable_linears(model))
