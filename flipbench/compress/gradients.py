"""Σ_samples |∂L/∂W| for every quantizable linear (TACQ's gradient term), one decoder block at a time.

L is the mean next-token cross-entropy of one calibration row (batch 1, as the official TACQ code). The
backward pass runs in ``dtype`` (fp32 by default, as the official code, whatever the model's own dtype) on
copies of the weights made on the device; the model is never changed. The accumulator lives on the CPU
(fp32, one value per quantized weight).

With ``checkpointing`` (the default) the model is never whole on the device: a forward sweep keeps each
block's input (on the CPU), the logits' gradient is taken with only the embeddings, final norm and head
onloaded, and a backward sweep from the last block to the first onloads one block, recomputes its forward
for each sample and back-propagates that sample's gradient through it: per block, the gradients of its
weights are folded into a block-sized device accumulator, then added to the CPU one. Device memory: one
block in ``dtype`` plus one block's activations. Without it, the whole model is onloaded in ``dtype`` and
each sample runs one ordinary forward and backward (faster, needs the model on the device in ``dtype``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from flipbench.compress.families import (
    decoder_layers,
    family_of,
    param_matrix,
    quantizable_linears,
    weight_grad_matrix,
    weight_matrix,
    weight_param,
)
from flipbench.compress.layerwise import (LayerInputs, calibration_mode, capture_inputs, layer_output,
                                          outside_layers_on)
from flipbench.compress.placement import onload

Progress = Callable[[str], None] | None


def _shared(linears: dict) -> dict[int, list[str]]:
    """id(weight parameter) -> names of the linears (or expert matrices) that use it: one gradient, read into
    each of them."""
    sharing: dict[int, list[str]] = {}
    for name, module in linears.items():
        sharing.setdefault(id(weight_param(module)), []).append(name)
    return sharing


def _next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ids[1:] given logits (1, T, vocab) of ids (1, T)."""
    return F.cross_entropy(logits[0, :-1].float(), ids[0, 1:].to(logits.device))


def _whole_model(model, ids, device, dtype, G, progress: Progress) -> None:
    """One ordinary forward and backward per sample with the whole model onloaded. Each weight's gradient is
    folded into G and freed as soon as backward has it, so the linears' gradients never coexist."""
    linears = quantizable_linears(model)

    def fold_into(names: list[str]):
        def hook(param: torch.Tensor) -> None:
            for name in names:
                G[name] += weight_grad_matrix(linears[name]).abs().float().cpu()
            param.grad = None
        return hook

    with onload(model, device, dtype, write_back=False):
        handles = []
        for names in _shared(linears).values():
            weight = weight_param(linears[names[0]]).requires_grad_(True)
            handles.append(weight.register_post_accumulate_grad_hook(fold_into(names)))
        try:
            for index, row in enumerate(ids):
                if progress:
                    progress(f"tacq gradients {index + 1}/{len(ids)}")
                x = row[None].to(device)  # (1, T)
                with torch.enable_grad():
                    _next_token_loss(model(input_ids=x, use_cache=False).logits, x).backward()
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def _layers_replaced(layers: nn.ModuleList, last: torch.Tensor, as_tuple: bool) -> Iterator[None]:
    """Every decoder layer passes its input through, except the last, which returns ``last``: the model's own
    forward then computes the logits from a given final hidden state (final norm, head, soft-capping...).
    as_tuple: the real layers return a tuple (hidden, ...) that the model indexes (Falcon, older families)."""
    def shaped(hidden: torch.Tensor):
        return (hidden,) if as_tuple else hidden

    def through(hidden=None, *args, **kwargs):
        return shaped(kwargs["hidden_states"] if hidden is None else hidden)

    saved = [layer.__dict__.get("forward") for layer in layers]
    for layer in layers:
        layer.forward = through
    layers[-1].forward = lambda *args, **kwargs: shaped(last)
    try:
        yield
    finally:
        for layer, forward in zip(layers, saved):
            del layer.forward
            if forward is not None:
                layer.forward = forward


def _blockwise(model, ids, device, dtype, G, progress: Progress) -> None:
    family, linears = family_of(model), quantizable_linears(model)
    layers = decoder_layers(model, family)
    inputs = capture_inputs(model, ids, device, dtype)
    boundaries = []  # boundaries[i][s]: block i's input for sample s (1, T, hidden), on the CPU
    hidden = inputs.hidden
    for index, layer in enumerate(layers):
        if progress:
            progress(f"tacq gradients: forward block {index + 1}/{len(layers)}")
        boundaries.append([h.cpu() for h in hidden])
        with onload(layer, device, dtype, write_back=False):
            outs = [layer(h, *a, **k) for h, a, k in zip(hidden, inputs.args, inputs.kwargs)]
            as_tuple = isinstance(outs[0], (tuple, list))
            hidden = [layer_output(out) for out in outs]
            del outs
    grads = []  # ∂L/∂(last block's output) per sample (1, T, hidden), on the device
    with outside_layers_on(model, layers, device, dtype):
        for row, h in zip(ids, hidden):
            h = h.detach().requires_grad_(True)
            x = row[None].to(device)  # (1, T)
            with _layers_replaced(layers, h, as_tuple), torch.enable_grad():
                loss = _next_token_loss(model(input_ids=x, use_cache=False).logits, x)
                grads.append(torch.autograd.grad(loss, h)[0])
    del hidden
    for index in reversed(range(len(layers))):
        if progress:
            progress(f"tacq gradients: backward block {index + 1}/{len(layers)}")
        prefix = f"{family.layers}.{index}."
        block = {name: module for name, module in linears.items() if name.startswith(prefix)}
        with onload(layers[index], device, dtype, write_back=False):
            sharing = _shared(block)
            weights = [weight_param(block[names[0]]).requires_grad_(True) for names in sharing.values()]
            acc = [torch.zeros_like(w, dtype=torch.float32) for w in weights]  # Σ_s |∂L_s/∂w|, as stored
            for s, (h, a, k) in enumerate(zip(boundaries[index], inputs.args, inputs.kwargs)):
                h = h.to(device).requires_grad_(True)
                with torch.enable_grad():
                    out = layer_output(layers[index](h, *a, **k))
                    *dW, dh = torch.autograd.grad(out, [*weights, h], grads[s], allow_unused=True)
                for total, g in zip(acc, dW):
                    if g is not None:  # None: this sample's forward never used the weight
                        total += g.abs().float()
                grads[s] = dh
            for names, total in zip(sharing.values(), acc):
                for name in names:
                    G[name] += param_matrix(block[name], total).cpu()  # (out, in)
        boundaries[index] = None


def gradient_magnitudes(
    model: nn.Module,
    ids: torch.Tensor,
    device,
    dtype: torch.dtype = torch.float32,
    checkpointing: bool = True,
    progress: Progress = None,
) -> dict[str, torch.Tensor]:
    """Σ_samples |∂L/∂W| (fp32, (out, in), on the CPU) per quantizable linear at the model's current weights.

    ids (n_samples, seq_len): one row per sample (batch 1). dtype: the backward pass's dtype. checkpointing:
    one block on the device at a time (see the module docstring). The model is unchanged on return."""
    linears = quantizable_linears(model)
    G = {name: torch.zeros(weight_matrix(m).shape, dtype=torch.float32) for name, m in linears.items()}
    flags = {param: param.requires_grad for param in model.parameters()}
    for param in flags:
        param.requires_grad_(False)
    try:
        with calibration_mode(model):
            (_blockwise if checkpointing else _whole_model)(model, ids, device, dtype, G, progress)
    finally:
        for param, flag in flags.items():
            param.requires_grad_(flag)
    return G
