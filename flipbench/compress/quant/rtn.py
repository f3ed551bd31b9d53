"""RTN on a whole model: every quantizable linear's weights rounded onto its grid. No data."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from flipbench.compress.families import (
    block_linears,
    decoder_layers,
    family_of,
    set_weight_matrix,
    weight_matrix,
)
from flipbench.compress.placement import onload
from flipbench.compress.quant.grid import GridSpec, rtn, rtn_grid_record


def rtn_model(
    model: nn.Module, spec: GridSpec, group_size: int, device, progress: Callable[[str], None] | None = None,
    grids: dict | None = None,
) -> None:
    """Quantize in place, one linear at a time on device.
    grids, when given, receives full linear name -> {scale, zero (out, n_groups), g_idx (in,)}."""
    family = family_of(model)
    blocks = decoder_layers(model, family)
    for index, block in enumerate(blocks):
        if progress:
            progress(f"rtn layer {index + 1}/{len(blocks)}")
        with onload(block, device):  # and back where it lives (a GPU, the CPU, offload storage)
            for name, module in block_linears(block).items():
                W = weight_matrix(module)  # (out, in)
                if grids is not None:
                    grids[f"{family.layers}.{index}.{name}"] = rtn_grid_record(W, spec, group_size)
                set_weight_matrix(module, family, rtn(W, spec, group_size))
