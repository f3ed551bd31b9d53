"""TACQ: Task-Circuit Quantization (Xiao et al. 2025, arXiv 2504.07389).

GPTQ, except for a tiny task-salient set of weights that stays in 16-bit. Salience of weight w:
    S = |W| · Σ_samples |∂L/∂W| · |Q(W) − W|
(how large it is, how much the task loss moves with it, and how much quantization would move it), with
Q(W) from a first GPTQ pass at the target bits. The global top keep_fraction of all quantized weights is
kept; a second GPTQ pass from the original weights leaves them out of the grids and the error sweep.

Memory, beyond the model: the method's fp32 accumulator of |∂L/∂W| per quantized linear (replaced by S
linear by linear), on the CPU as in the official code (see gradients.py for the backward pass: fp32, one
block on the device at a time). The weights are never copied in memory: the original weights the second
pass starts from are spilled to a temporary file before the first pass (in the system temp folder: set
TMPDIR to a disk-backed folder where /tmp is a RAM disk) and read back one linear at a time.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flipbench.compress.families import quantizable_linears, weight_matrix
from flipbench.compress.gradients import gradient_magnitudes
from flipbench.compress.placement import onload
from flipbench.compress.quant.gptq import GPTQSettings, gptq_model


@dataclass(frozen=True)
class GradientSettings:
    """TACQ's gradient step: the backward pass's dtype, and one block on the device at a time or not."""

    dtype: torch.dtype = torch.float32
    checkpointing: bool = True


def n_to_keep(keep_fraction: float, n_params: int) -> int:
    """ceil(keep_fraction · n), ignoring float noise such as 0.07·100 = 7.000000000000001."""
    return min(n_params, math.ceil(keep_fraction * n_params - 1e-9))


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself where it owns its storage (torch.save writes the whole storage), else a compact copy of it."""
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def saliency(W: torch.Tensor, G: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """S = |W| · G · |Q − W|, all (out, in); fp32."""
    W = W.float()
    return W.abs() * G.float() * (Q.float() - W).abs()


def top_k_masks(scores: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Boolean masks marking exactly min(k, total) entries: the global top k of all score tensors.

    Streams over the tensors, keeping a running top k (values and global flat ids), so the scores are
    never concatenated."""
    masks = {name: torch.zeros(S.shape, dtype=torch.bool, device=S.device) for name, S in scores.items()}
    if k == 0:
        return masks
    device = next(iter(scores.values())).device
    values, ids = torch.empty(0, device=device), torch.empty(0, dtype=torch.long, device=device)
    offsets, offset = {}, 0
    for name, S in scores.items():
        flat = S.detach().flatten().float().to(device)
        offsets[name] = offset
        values = torch.cat([values, flat])
        ids = torch.cat([ids, offset + torch.arange(flat.numel(), device=device)])
        values, top = torch.topk(values, min(k, values.numel()))
        ids = ids[top]
        offset += flat.numel()
    for name, S in scores.items():
        local = ids[(ids >= offsets[name]) & (ids < offsets[name] + S.numel())] - offsets[name]
        masks[name].view(-1)[local.to(S.device)] = True
    return masks


def salient_masks(
    model: nn.Module,
    calib: torch.Tensor,
    task_calib: torch.Tensor,
    settings: GPTQSettings,
    keep_fraction: float,
    device,
    true_sequential: bool = True,
    progress: Callable[[str], None] | None = None,
    gradients: GradientSettings = GradientSettings(),
) -> tuple[dict[str, torch.Tensor], dict]:
    """TACQ steps 1–4: the masks of weights to keep in 16-bit (full linear name -> bool (out, in)), plus
    {"seconds": ..., "damp_retries": ...}. The model's weights are unchanged on return."""
    linears = quantizable_linears(model)
    seconds = {}
    start = time.perf_counter()
    # of the ORIGINAL weights; (out, in) fp32 on the CPU
    S = gradient_magnitudes(model, task_calib, device, gradients.dtype, gradients.checkpointing, progress)
    seconds["gradients"] = time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="flipbench-tacq-") as spill:
        start = time.perf_counter()
        originals = {}
        for index, (name, module) in enumerate(linears.items()):  # one tensor at a time
            originals[name] = Path(spill) / f"{index}.pt"
            # also from a device_map's GPU or offload storage (an expert matrix: its experts module)
            with onload(getattr(module, "experts", module), "cpu", write_back=False):
                torch.save(_own_storage(module.weight.data), originals[name])
        retries, _ = gptq_model(
            model, calib, settings, device, true_sequential, None, progress, "tacq gptq pass 1 layer"
        )
        seconds["gptq_pass1"] = time.perf_counter() - start

        start = time.perf_counter()
        for name, module in linears.items():
            stored = torch.load(originals[name], mmap=True, weights_only=True)  # as module.weight, file-backed
            with onload(getattr(module, "experts", module), "cpu"):
                Q = weight_matrix(module).clone()  # (out, in): pass 1's result, one linear at a time
                module.weight.data.copy_(stored)  # back to the original for the second pass
                S[name] = saliency(weight_matrix(module), S[name], Q)
            del stored, Q
    n_params = sum(s.numel() for s in S.values())
    masks = top_k_masks(S, n_to_keep(keep_fraction, n_params))
    seconds["saliency"] = time.perf_counter() - start
    return masks, {"seconds": seconds, "damp_retries": retries}


def tacq_model(
    model: nn.Module,
    calib: torch.Tensor,
    task_calib: torch.Tensor,
    settings: GPTQSettings,
    keep_fraction: float,
    device,
    true_sequential: bool = True,
    progress: Callable[[str], None] | None = None,
    gradients: GradientSettings = GradientSettings(),
    kept: dict | None = None,
) -> dict:
    """TACQ in place; returns {"seconds", "damp_retries" (second pass), "n_kept", "unreached" (second pass)}.
    kept, when given, receives full linear name -> {"keep": bool (out, in)}, the weights kept in 16-bit."""
    masks, info = salient_masks(
        model, calib, task_calib, settings, keep_fraction, device, true_sequential, progress, gradients
    )
    if kept is not None:
        kept.update({name: {"keep": mask.cpu()} for name, mask in masks.items()})
    start = time.perf_counter()
    retries, unreached = gptq_model(
        model, calib, settings, device, true_sequential, masks, progress, "tacq gptq pass 2 layer"
    )
    info["seconds"]["gptq_pass2"] = time.perf_counter() - start
    n_kept = int(sum(int(mask.sum()) for mask in masks.values()))
    return {"seconds": info["seconds"], "damp_retries": retries, "n_kept": n_kept, "unreached": unreached}
