"""Where a model's weights live, and onloading one module at a time onto the compute device.

A model loaded with an accelerate ``device_map`` may keep modules on several GPUs, on the CPU, or offloaded
(its parameters are ``meta`` tensors and the values sit in an accelerate *weights map*: a CPU dict or files
on disk, read by the module's ``AlignDevicesHook`` just before each forward). The compressors never move a
whole model: :func:`onload` puts one module (a decoder block, or the embeddings) on the device as real
tensors, lets the caller run and rewrite it there, and afterwards puts every tensor back where it lived,
writing changed values of offloaded weights back into their weights map (on disk: a new ``.dat`` file in the
model's offload folder; the source checkpoint is never written). While a module is onloaded its hooks
execute on the compute device and do not reload its weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


def _align_hooks(module: nn.Module) -> list:
    """The accelerate AlignDevicesHooks attached to module itself (a SequentialHook may chain several)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    hooks = getattr(hook, "hooks", (hook,))
    return [h for h in hooks if hasattr(h, "execution_device") and hasattr(h, "offload")]


def offload_source(root: nn.Module, name: str):
    """(weights map, key in it) holding the value of root's tensor ``name`` when it is offloaded, else None.

    The hook that owns an offloaded tensor sits on the tensor's module, or on an ancestor that places its
    submodules (``place_submodules``); the key is the tensor's name relative to the hooked module."""
    parts = name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        holder = root.get_submodule(".".join(parts[:depth]))
        for hook in _align_hooks(holder):
            if hook.offload and hook.weights_map is not None and (depth == len(parts) - 1 or hook.place_submodules):
                key = ".".join(parts[depth:])
                if key in hook.weights_map:
                    return hook.weights_map, key
    return None


def store_offloaded(weights_map, key: str, value: torch.Tensor) -> None:
    """Write value into an accelerate weights map (a CPU dict, or an OffloadedWeightsLoader whose disk entries
    may point at the source checkpoint: those are redirected to a new file in the loader's offload folder)."""
    from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset, offload_weight

    if isinstance(weights_map, PrefixedDataset):
        weights_map, key = weights_map.dataset, weights_map.prefix + key
    value = value.detach().to("cpu")
    if isinstance(weights_map, OffloadedWeightsLoader):
        if key in weights_map.state_dict:
            weights_map.state_dict[key] = value
        else:
            if weights_map.save_folder is None:
                raise ValueError(f"offloaded weight {key} has no offload folder to be rewritten in; set model.offload_folder")
            offload_weight(value, key, weights_map.save_folder, index=weights_map.index)
    elif isinstance(weights_map, dict):
        weights_map[key] = value
    else:
        raise TypeError(f"cannot write offloaded weight {key} into a {type(weights_map).__name__}")


@dataclass
class _Slot:
    owner: nn.Module
    kind: str  # "_parameters" or "_buffers"
    name: str
    original: torch.Tensor  # the tensor object as it was (possibly meta)
    home: torch.Tensor  # its data as it was
    source: tuple | None  # (weights map, key) for an offloaded tensor


def _slots(module: nn.Module, recurse: bool) -> list[_Slot]:
    slots, seen = [], set()
    for prefix, owner in module.named_modules(remove_duplicate=False) if recurse else [("", module)]:
        for kind in ("_parameters", "_buffers"):
            for name, tensor in getattr(owner, kind).items():
                if tensor is None or (id(owner), name) in seen:
                    continue
                seen.add((id(owner), name))
                full = f"{prefix}.{name}" if prefix else name
                source = offload_source(module, full) if tensor.is_meta else None
                if tensor.is_meta and source is None:
                    raise ValueError(
                        f"{full} is on the meta device and no accelerate hook inside this module holds its value; "
                        "offload whole decoder blocks (device_map entries per block, not per submodule of a parent)"
                    )
                slots.append(_Slot(owner, kind, name, tensor, tensor.data, source))
    return slots


@contextmanager
def _hooks_on(module: nn.Module, device, recurse: bool) -> Iterator[None]:
    """Every accelerate hook in module executes on device and leaves the (already onloaded) weights alone."""
    modules = module.modules() if recurse else [module]
    saved = [(hook, hook.execution_device, hook.offload) for sub in modules for hook in _align_hooks(sub)]
    for hook, _, _ in saved:
        hook.execution_device, hook.offload = device, False
    try:
        yield
    finally:
        for hook, execution_device, offload in saved:
            hook.execution_device, hook.offload = execution_device, offload


@contextmanager
def onload(
    module: nn.Module, device, dtype: torch.dtype | None = None, write_back: bool = True, recurse: bool = True
) -> Iterator[nn.Module]:
    """module's parameters and buffers (its submodules' too unless recurse=False) as real tensors on device,
    parameters cast to dtype when given.

    On exit every tensor returns to where it lived. write_back: values changed inside (quantized weights)
    are kept: copied to the home device, or written into the weights map of offloaded tensors. Without it
    (a read-only pass, e.g. gradients in another dtype) the original tensors are restored untouched."""
    device = torch.device(device)
    slots = _slots(module, recurse)
    for slot in slots:
        table = getattr(slot.owner, slot.kind)
        value = slot.source[0][slot.source[1]] if slot.source else slot.home
        value = value.to(device, dtype) if dtype is not None and slot.kind == "_parameters" else value.to(device)
        if slot.kind == "_buffers":
            table[slot.name] = value
        elif slot.source:  # a meta Parameter cannot take real data: a new Parameter until exit
            table[slot.name] = nn.Parameter(value, requires_grad=slot.original.requires_grad)
        else:  # the same Parameter object (tied weights stay tied), new data
            slot.original.data = value
    try:
        with _hooks_on(module, device, recurse):
            yield module
    finally:
        for slot in slots:
            table = getattr(slot.owner, slot.kind)
            if slot.kind == "_parameters" and write_back:
                current = table[slot.name].detach()
                if slot.source:
                    store_offloaded(*slot.source, current.to(slot.original.dtype))
                else:
                    slot.original.data = current.to(slot.home.device, slot.home.dtype)
            elif slot.kind == "_parameters" and not slot.source:
                slot.original.data = slot.home
            table[slot.name] = slot.original
