"""Saving a compressed model so that it can be shipped (``output.save_model=true``).

RTN and GPTQ: the compressed-tensors ``pack-quantized`` format (integer codes packed into int32, one scale and
zero point per output channel or group of columns, in column order: GPTQ's act-order with dynamic groups,
whose groups follow the sweep order, is refused; use static groups), which transformers loads (``quant_method: compressed-tensors``) and vLLM runs with low-bit kernels. The
grids are the ones the quantizer fitted (recorded during compression), so the codes reproduce the in-process
fake-quantized weights exactly: flipbench's codes q ∈ [0, 2^b − 1] with zero z become compressed-tensors'
signed codes q − 2^(b−1) with zero point z − 2^(b−1), the same de-quantized value s·(q − z).

TACQ: its 16-bit outliers have no kernel format, so the model is saved dense (safetensors of the de-quantized
weights with the kept weights in place) beside ``tacq_mask.safetensors``, which records the kept entries
per linear; the saved size is that of the dense model, not of TACQ's avg_bits.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from flipbench.compress.families import quantizable_linears
from flipbench.compress.quant.config import QuantConfig

FORMAT_NOTE = "compressed-tensors pack-quantized (int codes packed in int32, scale and zero point per group)"
DENSE_NOTE = ("dense safetensors: TACQ's 16-bit outliers have no kernel format; tacq_mask.safetensors records the "
              "kept (16-bit) entries of each quantized linear")


def _quant_args(cfg: QuantConfig):
    from compressed_tensors.quantization import QuantizationArgs

    grouped = cfg.group_size != -1
    return QuantizationArgs(num_bits=cfg.bits, type="int", symmetric=cfg.sym, strategy="group" if grouped else "channel",
                            group_size=cfg.group_size if grouped else None)


def packable(cfg: QuantConfig) -> str | None:
    """Why cfg's grids cannot be packed, or None. GPTQ's act-order numbers dynamic groups in sweep order, which
    needs a g_idx; compressed-tensors (>= 0.20) keeps groups in column order only."""
    if cfg.act_order and cfg.group_size != -1 and not cfg.static_groups:
        return ("output.save_model with compression.act_order=true and groups needs compression.static_groups=true "
                "(compressed-tensors stores groups in column order, without g_idx)")
    return None


def save_packed(model: nn.Module, tokenizer, grids: dict, cfg: QuantConfig, out_dir: Path) -> dict:
    """Pack the quantized linears in place (the model is not usable for evaluation afterwards) and save."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationConfig, QuantizationScheme, QuantizationStatus,
                                                 apply_quantization_config)

    linears = quantizable_linears(model)
    odd = next((name for name, module in linears.items() if type(module) is not nn.Linear), None)
    if odd:
        raise ValueError(f"output.save_model packs nn.Linear layers only; {odd} is a {type(linears[odd]).__name__} (GPT-2 "
                         "Conv1D or fused MoE experts): quantize it without saving, or save with TACQ (dense)")
    for name, grid in grids.items():
        cols = len(grid["g_idx"])
        if cfg.group_size != -1 and cols % cfg.group_size:
            raise ValueError(f"output.save_model: group_size={cfg.group_size} does not divide {name}'s {cols} inputs; "
                             "the packed format needs whole groups (use a divisor, or -1)")
        if not torch.equal(grid["g_idx"], torch.arange(cols) // (cols if cfg.group_size == -1 else cfg.group_size)):
            raise ValueError(packable(cfg) or f"{name}: groups out of column order cannot be packed")
    scheme = QuantizationScheme(targets=sorted(linears), weights=_quant_args(cfg))
    qconfig = QuantizationConfig(config_groups={"group_0": scheme}, quantization_status=QuantizationStatus.FROZEN,
                                 format="pack-quantized")
    apply_quantization_config(model, qconfig)
    offset = 2 ** (cfg.bits - 1)  # flipbench's unsigned codes -> compressed-tensors' signed ones
    for name, module in linears.items():
        grid = grids[name]
        module.weight_scale.data = grid["scale"].to(module.weight_scale.dtype).reshape(module.weight_scale.shape)
        zero = (grid["zero"] - offset).round()
        module.weight_zero_point.data = zero.to(module.weight_zero_point.dtype).reshape(module.weight_zero_point.shape)
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(out_dir)
    compressor.update_config(str(out_dir))
    tokenizer.save_pretrained(out_dir)
    return {"path": str(out_dir), "format": FORMAT_NOTE, "bytes_on_disk": _size(out_dir)}


def save_dense(model: nn.Module, tokenizer, masks: dict, out_dir: Path) -> dict:
    from safetensors.torch import save_file

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    save_file({name: m["keep"].to(torch.uint8).contiguous() for name, m in masks.items()}, out_dir / "tacq_mask.safetensors")
    return {"path": str(out_dir), "format": DENSE_NOTE, "n_kept": int(sum(int(m["keep"].sum()) for m in masks.values())),
            "bytes_on_disk": _size(out_dir)}


def save(model: nn.Module, tokenizer, grids: dict, cfg: QuantConfig, out_dir: Path) -> dict:
    """Save the compressed model under out_dir (see the module docstring); returns what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    details = save_dense(model, tokenizer, grids, out_dir) if cfg.method == "tacq" else \
        save_packed(model, tokenizer, grids, cfg, out_dir)
    (out_dir / "flipbench_export.json").write_text(json.dumps({"method": cfg.method, **details}, indent=2) + "\n")
    return details


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
