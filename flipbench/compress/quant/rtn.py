"""RTN on a whole model: every quantizable linear's weights rounded onto its grid. No data."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from flipbench.compress.families import family_of, quantizable_linears, set_weight_matrix, weight_matrix
import torch

from flipbench.compress.quant.grid import GridSpec, fit, rtn


def rtn_model(
    model: nn.Module, spec: GridSpec, group_size: int, device, progress: Callable[[str], None] | None = None,
    grids: dict | None = None,
) -> int:
    """Quantize in place, one linear at a time on device; returns the number of linears quantized.
    grids, when given, receives full linear name -> {scale, zero (out, n_groups), g_idx (in,)}."""
    family = family_of(model)
    linears = quantizable_linears(model)
    for index, (name, module) in enumerate(linears.items()):
        if progress and index % len(family.linears) == 0:
            progress(f"rtn layer {index // len(family.linears) + 1}/{len(linears) // len(family.linears)}")
        W = weight_matrix(module, family).to(device)  # (out, in)
        if grids is not None:
            grids[name] = _grid_record(W, spec, group_size)
        set_weight_matrix(module, family, rtn(W, spec, group_size))
    return len(linears)


def _grid_record(W: torch.Tensor, spec: GridSpec, group_size: int) -> dict:
    """The grids rtn() fits on W (out, in), as scale and zero (out, n_groups) and each column's group."""
    rows, cols = W.shape
    group = cols if group_size == -1 else group_size
    scale, zero = fit(W.float().reshape(rows * (cols // group), group), spec)  # (rows·n_groups, 1)
    return {"scale": scale.reshape(rows, cols // group).cpu(), "zero": zero.reshape(rows, cols // group).cpu(),
            "g_idx": torch.arange(cols) // group}
