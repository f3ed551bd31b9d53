"""One registry of compression methods (quantizers and pruners) and the one entry point, compress(), with its
report."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from flipbench.compress.families import decoder_layers, family_of, quantizable_linears, weight_matrix, weight_param
from flipbench.compress.prune.config import PruneConfig
from flipbench.compress.prune.config import validate as validate_prune
from flipbench.compress.prune.run import needs_calibration, prune
from flipbench.compress.quant.config import QuantConfig
from flipbench.compress.quant.config import validate as validate_quant
from flipbench.compress.quant.gptq import gptq_model
from flipbench.compress.quant.rtn import rtn_model
from flipbench.compress.quant.tacq import tacq_model

Progress = Callable[[str], None] | None


def _none(model, cfg, calib, task_calib, device, progress, grids=None) -> dict:
    return {"seconds": {}, "damp_retries": {}, "n_kept": 0, "unreached": []}


def _rtn(model, cfg, calib, task_calib, device, progress, grids=None) -> dict:
    start = time.perf_counter()
    rtn_model(model, cfg.grid, cfg.group_size, device, progress, grids)
    return {"seconds": {"rtn": time.perf_counter() - start}, "damp_retries": {}, "n_kept": 0, "unreached": []}


def _gptq(model, cfg, calib, task_calib, device, progress, grids=None) -> dict:
    start = time.perf_counter()
    retries, unreached = gptq_model(model, calib, cfg.gptq, device, cfg.true_sequential, None, progress,
                                    grids=grids)
    seconds = {"gptq": time.perf_counter() - start}
    return {"seconds": seconds, "damp_retries": retries, "n_kept": 0, "unreached": unreached}


def _tacq(model, cfg, calib, task_calib, device, progress, grids=None) -> dict:
    return tacq_model(model, calib, task_calib, cfg.gptq, cfg.keep_fraction, device, cfg.true_sequential, progress,
                      cfg.gradients, kept=grids)


def _prune(model, cfg, calib, task_calib, device, progress, grids=None) -> dict:
    return prune(model, cfg, calib, device, progress)


# name -> (method, settings type, needs calibration data: a bool or a function of the settings)
METHODS: dict[str, tuple[Callable[..., dict], type, bool | Callable[[PruneConfig], bool]]] = {
    "none": (_none, QuantConfig, False),
    "rtn": (_rtn, QuantConfig, False),
    "gptq": (_gptq, QuantConfig, True),
    "tacq": (_tacq, QuantConfig, True),
    "magnitude": (_prune, PruneConfig, False),
    "wanda": (_prune, PruneConfig, True),
    "sparsegpt": (_prune, PruneConfig, True),
    "layerdrop": (_prune, PruneConfig, needs_calibration),  # select=angular only
}


def settings_type(method: str) -> type:
    """QuantConfig or PruneConfig: the settings compress() takes for method."""
    return METHODS[method][1] if method in METHODS else QuantConfig


def needs_data(cfg: QuantConfig | PruneConfig) -> bool:
    """Whether compress() needs calibration token ids for these settings."""
    needs = METHODS[cfg.method][2]
    return needs(cfg) if callable(needs) else needs


def validate(model: nn.Module, cfg: QuantConfig | PruneConfig) -> None:
    """Cheap checks before any expensive work; raises ValueError with one line naming the problem and the fix."""
    (validate_prune if isinstance(cfg, PruneConfig) else validate_quant)(model, cfg)


def avg_bits(
    shapes: Iterable[tuple[int, int]], bits: int, group_size: int, n_kept: int = 0, sym: bool = False
) -> float:
    """Bits per quantized weight, over the quantized layers of shapes (out, in): each row of `in` weights
    stores bits per weight, and per group a 16-bit scale plus (asymmetric grids only) a bits-wide zero
    point, for the ceil(in / group_size) groups it has (per channel: one); plus 32 bits per kept weight
    (16-bit value + 16-bit index). So bits + ceil(in/g)·(16 + bits)/in, or ceil(in/g)·16/in symmetric."""
    per_group = 16 + (0 if sym else bits)
    total, stored = 0, 0.0
    for out_features, in_features in shapes:
        groups = 1 if group_size == -1 else math.ceil(in_features / group_size)
        total += out_features * in_features
        stored += out_features * (bits * in_features + groups * per_group)
    return (stored + 32 * n_kept) / total


def model_bytes(model: nn.Module, quantized: Iterable[torch.Tensor], bits_per_quantized: float) -> int:
    """Every parameter at its dtype size, except the quantized ones at bits_per_quantized / 8 bytes each."""
    quantized_ids = {id(p) for p in quantized}
    n_quantized = sum(p.numel() for p in model.parameters() if id(p) in quantized_ids)
    other = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in quantized_ids)
    return int(round(other + n_quantized * bits_per_quantized / 8))


def compress(
    model: nn.Module,
    cfg: QuantConfig | PruneConfig,
    calib: torch.Tensor | None = None,
    task_calib: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    progress: Progress = None,
    grids: dict | None = None,
) -> dict:
    """Compress model in place: quantizers fake-quantize (weights replaced by their de-quantized values, same
    dtype), pruners zero weights or remove decoder blocks (see prune/).

    calib: LongTensor (n_samples, seq_len) of token ids for the GPTQ/TACQ/SparseGPT Hessians, Wanda's norms
    and layerdrop's angular distances; task_calib: token ids of task examples for TACQ's gradients (defaults
    to calib). grids, when given, receives per linear what an export needs: RTN/GPTQ {scale, zero, g_idx},
    TACQ {keep} (its 16-bit mask); pruners leave it empty. Returns a JSON-able report."""
    validate(model, cfg)
    method = METHODS[cfg.method][0]
    if needs_data(cfg) and calib is None:
        raise ValueError(
            f"method {cfg.method} needs calibration token ids (calib); pass a (n_samples, seq_len) LongTensor"
        )
    start = time.perf_counter()
    details = method(model, cfg, calib, calib if task_calib is None else task_calib, device, progress, grids)
    details["seconds"]["total"] = time.perf_counter() - start
    return details if isinstance(cfg, PruneConfig) else _report(model, cfg, details)


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
            "n_unreached_rtn": 0,
            "unreached_rtn": [],
            "params_kept": 1.0,
        }
    family = family_of(model)
    linears = quantizable_linears(model)
    shapes = [tuple(weight_matrix(module).shape) for module in linears.values()]
    weights = {id(p): p for p in (weight_param(module) for module in linears.values())}
    bits = avg_bits(shapes, cfg.bits, cfg.group_size, details["n_kept"], cfg.sym)
    return report | {
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "sym": cfg.sym,
        "mse": cfg.mse,
        "mse_norm": cfg.mse_norm if cfg.mse else None,
        "act_order": cfg.act_order,
        "static_groups": cfg.static_groups,
        "damp": cfg.damp,
        "block_size": cfg.block_size,
        "true_sequential": cfg.true_sequential,
        "keep_fraction": cfg.keep_fraction if cfg.method == "tacq" else 0.0,
        **({"grad_dtype": cfg.grad_dtype, "gradient_checkpointing": cfg.gradient_checkpointing} if cfg.method == "tacq" else {}),
        "avg_bits": bits,
        "model_bytes": model_bytes(model, list(weights.values()), bits),
        "n_quantized_params": sum(rows * cols for rows, cols in shapes),
        "n_kept": details["n_kept"],
        "layers_quantized": len(linears),
        "decoder_layers": len(decoder_layers(model, family)),
        "damp_retries": int(sum(details["damp_retries"].values())),
        "damp_retries_by_layer": details["damp_retries"],
        # weights no calibration token reached (experts the router never picked): quantized with RTN
        "n_unreached_rtn": len(details["unreached"]),
        "unreached_rtn": details["unreached"],
        "params_kept": 1.0,  # every weight stays, at fewer bits
    }
