"""Run a causal LM one decoder layer at a time on calibration data.

The first layer's inputs are captured with *all* their positional args and kwargs (new transformers pass
``position_embeddings``, masks, cache objects) by a forward pre-hook that stops the forward pass. Then each
layer in turn is onloaded to the device (placement.onload: also from CPU or disk offload of an accelerate
device_map), handed to the caller (who collects statistics and quantizes it), re-run to produce the next
layer's inputs, and put back. Only one layer's weights and activations are on the device at a time.

Within a layer, the true-sequential groups come from one traced forward (sequential_groups), and each
quantizable weight's inputs are delivered by collect_inputs: forward hooks on linears, and for fused
mixture-of-experts modules the tokens routed to each expert (experts.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from flipbench.compress.experts import ExpertWeight, routed_inputs
from flipbench.compress.families import Family, block_linears, decoder_layers, family_of
from flipbench.compress.placement import onload


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the first decoder layer needs to run."""


@dataclass
class LayerInputs:
    """One entry per calibration sample (batch 1): hidden (1, seq, hidden), the other args, the kwargs."""

    hidden: list[torch.Tensor]
    args: list[tuple]
    kwargs: list[dict]


def _move(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_move(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _outside_modules(model: nn.Module, layers: nn.ModuleList) -> list[tuple[nn.Module, bool]]:
    """(module, recurse) pairs covering every tensor outside the decoder layers: the layers' ancestors on their
    own (recurse=False) and each of their other children whole (embeddings, rotary tables, final norm, head)."""
    chain = [module for module in model.modules() if any(m is layers for m in module.modules())]
    ancestors = {id(m) for m in chain}
    outside = [(module, False) for module in chain if module is not layers]
    for module in chain:
        outside += [(child, True) for child in module.children() if id(child) not in ancestors and child is not layers]
    return outside


@contextmanager
def outside_layers_on(model: nn.Module, layers: nn.ModuleList, device, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Temporarily put every parameter and buffer that is not in a decoder layer (embeddings, rotary tables,
    final norm, head) plus layer 0 on device (read-only, in dtype when given), so the model can run up to
    layer 0, or from the last layer's output to the logits, there."""
    with ExitStack() as stack:
        for module, recurse in _outside_modules(model, layers):
            stack.enter_context(onload(module, device, dtype, write_back=False, recurse=recurse))
        stack.enter_context(onload(layers[0], device, dtype, write_back=False))
        yield


@contextmanager
def calibration_mode(model: nn.Module) -> Iterator[None]:
    """eval mode (no dropout), no KV cache, no autograd; restored afterwards."""
    was_training, use_cache = model.training, getattr(model.config, "use_cache", None)
    model.eval()
    model.config.use_cache = False
    try:
        with torch.no_grad():
            yield
    finally:
        model.config.use_cache = use_cache
        model.train(was_training)


def capture_inputs(model: nn.Module, calib: torch.Tensor, device, dtype: torch.dtype | None = None) -> LayerInputs:
    """Inputs of the first decoder layer for each row of calib (n_samples, seq_len), kept on device; with dtype,
    the embeddings (and position tables) run in that dtype."""
    layers = decoder_layers(model, family_of(model))
    captured = LayerInputs([], [], [])

    def hook(module, args, kwargs):
        hidden, rest = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
        captured.hidden.append(hidden)
        captured.args.append(rest)
        captured.kwargs.append(kwargs)
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with outside_layers_on(model, layers, device, dtype):
            for row in calib:
                try:
                    model(input_ids=row[None].to(device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return captured


def layer_output(out) -> torch.Tensor:
    """A decoder layer's hidden states from what it returned (a tensor, or a tuple in older transformers)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def run_layer(layer: nn.Module, inputs: LayerInputs) -> list[torch.Tensor]:
    """The layer's output hidden states for every sample."""
    return [layer_output(layer(hidden, *args, **kwargs))
            for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs)]


def _hooked_modules(targets: dict) -> dict[nn.Module, list[str]]:
    """module to hook -> the target names it feeds (a fused experts module feeds all its experts' weights)."""
    modules: dict[nn.Module, list[str]] = {}
    for name, target in targets.items():
        modules.setdefault(target.experts if isinstance(target, ExpertWeight) else target, []).append(name)
    return modules


def _prefix(name: str, target) -> str:
    """A fused experts module's own name inside the block: the target name less '<expert>.<param>'."""
    return name.rsplit(".", 2)[0] if isinstance(target, ExpertWeight) else name


@contextmanager
def collect_inputs(block: nn.Module, names, callback) -> Iterator[None]:
    """While active, every forward of block calls callback(name, X (..., in)) for each quantizable weight in
    names with the inputs it receives (an expert's weight: only its routed tokens)."""
    targets = {name: w for name, w in block_linears(block).items() if name in set(names)}
    handles = []
    for module, fed in _hooked_modules(targets).items():
        if isinstance(targets[fed[0]], ExpertWeight):
            prefix = _prefix(fed[0], targets[fed[0]])

            def hook(mod, args, kwargs, out, prefix=prefix, fed=set(fed)):
                for key, X in routed_inputs(mod, args, kwargs):
                    if f"{prefix}.{key}" in fed:
                        callback(f"{prefix}.{key}", X)
        else:

            def hook(mod, args, kwargs, out, name=fed[0]):
                callback(name, args[0] if args else next(iter(kwargs.values())))
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def sequential_groups(block: nn.Module, inputs: LayerInputs) -> list[list[str]]:
    """The block's quantizable weights in true-sequential groups, from one traced forward of its first input:
    weights fed the same tensor form one group, groups in the order their inputs appear. An expert's down
    projection follows its up projection. Weights the forward never reaches come last, in a group of their own."""
    targets = block_linears(block)
    groups: list[tuple[object, list[str]]] = []  # (key of the input tensor, names)
    alive = []  # the traced tensors, kept so that their ids stay unique during the trace

    def record(key, names):
        for seen, group in groups:
            if key is not None and seen == key:
                group.extend(n for n in names if n not in group)
                return
        groups.append((key, list(names)))

    def pre_hook(mod, args, kwargs, fed):
        x = args[0] if args else next(iter(kwargs.values()))
        alive.append(x)
        if any(name in group for _, group in groups for name in fed):
            return  # called before: its place is taken
        if isinstance(targets[fed[0]], ExpertWeight):
            record(id(x), [n for n in fed if not n.endswith(".down_proj")])
            record(None, [n for n in fed if n.endswith(".down_proj")])
        else:
            record(id(x), fed)

    handles = [
        module.register_forward_pre_hook(lambda mod, args, kwargs, fed=fed: pre_hook(mod, args, kwargs, fed),
                                         with_kwargs=True)
        for module, fed in _hooked_modules(targets).items()
    ]
    try:
        block(inputs.hidden[0], *inputs.args[0], **inputs.kwargs[0])
    finally:
        for handle in handles:
            handle.remove()
    traced = [group for _, group in groups]
    untraced = [name for name in targets if not any(name in group for group in traced)]
    return traced + ([untraced] if untraced else [])


def layer_by_layer(
    model: nn.Module, calib: torch.Tensor, device, progress=None, label: str = "layer"
) -> Iterator[tuple[int, nn.Module, Family, LayerInputs]]:
    """Yield (index, layer on device, family, inputs) for each decoder layer. When the caller resumes the
    iteration, the (now quantized) layer is re-run to make the next layer's inputs, then put back where it
    lives (its device, or its offload storage: see placement.onload)."""
    family = family_of(model)
    layers = decoder_layers(model, family)
    with calibration_mode(model):
        inputs = capture_inputs(model, calib, device)
        for index, layer in enumerate(layers):
            if progress:
                progress(f"{label} {index + 1}/{len(layers)}")
            with onload(layer, device):  # written back (quantized) where it lives when the caller resumes
                yield index, layer, family, inputs
                inputs = replace(inputs, hidden=run_layer(layer, inputs))


__all__ = [
    "LayerInputs",
    "calibration_mode",
    "capture_inputs",
    "collect_inputs",
    "layer_by_layer",
    "model_device",
    "run_layer",
    "sequential_groups",
]
