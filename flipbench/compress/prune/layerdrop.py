"""Layer dropping: remove whole decoder blocks and renumber what the architecture keys by layer index.

Which blocks: the last n (select=last, as Dutta et al. 2024 drop them), or the n consecutive blocks whose
input and output hidden states are closest in angular distance on the calibration data (select=angular,
Gromov et al. 2024, arXiv 2403.17887): d(x⁽ˡ⁾, x⁽ˡ⁺ⁿ⁾) = arccos(cos(x⁽ˡ⁾, x⁽ˡ⁺ⁿ⁾))/π, averaged over every
calibration token (the paper uses the last token; all tokens give a steadier estimate from few samples).
A block that barely turns the residual stream does little and is the cheapest to lose.

After dropping, the kept blocks are numbered 0..L−n−1 again: every submodule's ``layer_idx`` (the KV cache
slot it writes), ``config.num_hidden_layers`` and a per-layer ``config.layer_types``, so ``generate`` and the
cache see a consistent, shorter model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flipbench.compress.families import decoder_layers, family_of
from flipbench.compress.layerwise import layer_by_layer, run_layer


def _mean_angular_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Mean over samples and tokens of arccos(cos(a, b))/π for hidden states (1, seq, hidden) per sample."""
    total, count = 0.0, 0
    for x, y in zip(a, b):
        cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).clamp(-1, 1)  # (1, seq)
        total += (torch.arccos(cos) / math.pi).sum().item()
        count += cos.numel()
    return total / count


def angular_distances(model: nn.Module, calib: torch.Tensor, n: int, device, progress=None) -> list[float]:
    """d(x⁽ˡ⁾, x⁽ˡ⁺ⁿ⁾) for every start l = 0..L−n, where x⁽ˡ⁾ is the input of block l (x⁽ᴸ⁾ the last output)."""
    depth = len(decoder_layers(model, family_of(model)))
    window: list[list[torch.Tensor]] = []  # the last n+1 block boundaries seen
    distances = []
    for index, layer, _, inputs in layer_by_layer(model, calib, device, progress, "angular distance, layer"):
        boundaries = [inputs.hidden] + ([run_layer(layer, inputs)] if index == depth - 1 else [])
        for hidden in boundaries:
            window = (window + [hidden])[-(n + 1):]
            if len(window) == n + 1:
                distances.append(_mean_angular_distance(window[0], window[-1]))
    return distances


def select_layers(model: nn.Module, n: int, select: str, calib: torch.Tensor | None = None, device="cpu",
                  progress=None) -> list[int]:
    """Indices of the n blocks to drop: the last n, or the n consecutive ones of least angular distance."""
    depth = len(decoder_layers(model, family_of(model)))
    if select == "last":
        return list(range(depth - n, depth))
    if select == "angular":
        distances = angular_distances(model, calib, n, device, progress)
        start = min(range(len(distances)), key=distances.__getitem__)
        return list(range(start, start + n))
    raise ValueError(f"select={select!r} is unknown; use last or angular")


def drop_layers(model: nn.Module, drop: list[int]) -> None:
    """Remove the decoder blocks at indices drop, in place, and renumber the rest from 0."""
    layers = decoder_layers(model, family_of(model))
    path = next(name for name, module in model.named_modules() if module is layers)
    parent, _, attribute = path.rpartition(".")
    kept = [layer for index, layer in enumerate(layers) if index not in set(drop)]
    setattr(model.get_submodule(parent) if parent else model, attribute, nn.ModuleList(kept))
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) == len(layers):
        config.layer_types = [kind for index, kind in enumerate(layer_types) if index not in set(drop)]
    config.num_hidden_layers = len(kept)
