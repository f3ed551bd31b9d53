"""One registry of quantization methods and the one entry point, compress(), with its report."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from flipbench.compress.families import decoder_layers, family_of, quantizable_linears, weight_matrix
from flipbench.compress.quant.config import QuantConfig, validate
from flipbench.compress.quant.gptq import gptq_model
from flipbench.compress.quant.rtn import rtn_model
from flipbench.compress.quant.tacq import tacq_model

Progress = Callable[[str], None] | None


def _none(model, cfg, calib, task_calib, device, progress, grids=None) -> dict:
    return {"seconds": {}, "damp_retries": {}, "n_kept": 0}


def _rtn(model, cfg, calib, task_calib, device, progress, grids=None) -> dict:
    start = time.perf_counter()
    rtn_model(model, cfg.grid, cfg.group_size, device, progress, grids)
    return {"seconds": {"rtn": time.perf_counter() - start}, "damp_retries": {}, "n_kept": 0}


def _gptq(model, cfg, calib, task_calib, device, progress, grids=None) -> dict:
    start = time.perf_counter()
    retries = gptq_model(model, calib, cfg.gptq, device, cfg.true_sequential, None, progress, grids=grids)
    return {"seconds": {"gptq": time.perf_counter() - start}, "damp_retries": retries, "n_kept": 0}


def _tacq(model, cfg, calib, task_calib, device, progress, grids=None) -> dict:
    return tacq_model(model, calib, task_calib, cfg.gptq, cfg.keep_fraction, device, cfg.true_sequential, progress,
                      masks=grids)


# name -> (method, needs calibration data)
METHODS: dict[str, tuple[Callable[..., dict], bool]] = {
    "none": (_none, False),
    "rtn": (_rtn, False),
    "gptq": (_gptq, True),
    "tacq": (_tacq, True),
}


def avg_bits(shapes: Iterable[tuple[int, int]], bits: int, group_size: int, n_kept: int = 0) -> float:
    """Bits per quantized weight: bits + (16 + bits)/group (a 16-bit scale and a bits-wide zero per group;
    per channel the group is the whole input width) + 32 per kept weight (16-bit value + 16-bit index),
    weighted by parameter count over the quantized layers of shapes (out, in)."""
    total, weighted = 0, 0.0
    for out_features, in_features in shapes:
        group = in_features if group_size == -1 else group_size
        total += out_features * in_features
        weighted += out_features * in_features * (bits + (16 + bits) / group)
    return (weighted + 32 * n_kept) / total


def model_bytes(model: nn.Module, quantized: Iterable[torch.Tensor], bits_per_quantized: float) -> int:
    """Every parameter at its dtype size, except the quantized ones at bits_per_quantized / 8 bytes each."""
    quantized_ids = {id(p) for p in quantized}
    n_quantized = sum(p.numel() for p in model.parameters() if id(p) in quantized_ids)
    other = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in quantized_ids)
    return int(round(other + n_quantized * bits_per_quantized / 8))


def compress(
    model: nn.Module,
    cfg: QuantConfig,
    calib: torch.Tensor | None = None,
    task_calib: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    progress: Progress = None,
    grids: dict | None = None,
) -> dict:
    """Quantize model in place (fake-quant: weights replaced by their de-quantized values, same dtype).

    calib: LongTensor (n_samples, seq_len) of token ids for the GPTQ/TACQ Hessians; task_calib: token ids of
    task examples for TACQ's gradients (defaults to calib). grids, when given, receives per linear what an
    export needs: RTN/GPTQ {scale, zero, g_idx}, TACQ {keep} (its 16-bit mask). Returns a JSON-able report."""
    validate(model, cfg)
    method, needs_data = METHODS[cfg.method]
    if needs_data and calib is None:
        raise ValueError(
            f"method {cfg.method} needs calibration token ids (calib); pass a (n_samples, seq_len) LongTensor"
        )
    start = time.perf_counter()
    details = method(model, cfg, calib, calib if task_calib is None else task_calib, device, progress, grids)
    details["seconds"]["total"] = time.perf_counter() - start
    return _report(model, cfg, details)


def _report(model: nn.Module, cfg: QuantConfig, details: dict) -> dict:
    report = {"method": cfg.method, "seconds": details["seconds"]}
    if cfg.method == "none":  # nothing quantized: avg_bits is the weights' own width
        return report | {
            "bits": None,
            "group_size": None,
            "sym": None,
            "avg_bits": 8.0 * next(model.parameters()).element_size(),
            "model_bytes": model_bytes(model, [], 0.0),
            "n_quantized_params": 0,
            "n_kept": 0,
            "layers_quantized": 0,
            "decoder_layers": 0,
            "damp_retries": 0,
            "damp_retries_by_layer": {},
        }
    family = family_of(model)
    linears = quantizable_linears(model)
    shapes = [tuple(weight_matrix(module, family).shape) for module in linears.values()]
    bits = avg_bits(shapes, cfg.bits, cfg.group_size, details["n_kept"])
    return report | {
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "sym": cfg.sym,
        "mse": cfg.mse,
        "act_order": cfg.act_order,
        "static_groups": cfg.static_groups,
        "damp": cfg.damp,
        "block_size": cfg.block_size,
        "true_sequential": cfg.true_sequential,
        "keep_fraction": cfg.keep_fraction if cfg.method == "tacq" else 0.0,
        "avg_bits": bits,
        "model_bytes": model_bytes(model, [module.weight for module in linears.values()], bits),
        "n_quantized_params": sum(rows * cols for rows, cols in shapes),
        "n_kept": details["n_kept"],
        "layers_quantized": len(linears),
        "decoder_layers": len(decoder_layers(model, family)),
        "damp_retries": int(sum(details["damp_retries"].values())),
        "damp_retries_by_layer": details["damp_retries"],
    }
