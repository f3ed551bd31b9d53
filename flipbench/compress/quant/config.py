"""The quantization settings, and the cheap checks that run before any expensive work."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flipbench.compress.families import family_of
from flipbench.compress.quant.gptq import GPTQSettings
from flipbench.compress.quant.grid import GridSpec
from flipbench.compress.quant.tacq import GradientSettings

METHOD_NAMES = ("none", "rtn", "gptq", "tacq")


@dataclass
class QuantConfig:
    method: str = "rtn"  # one of METHOD_NAMES (checkpoint is handled by the pipeline)
    bits: int = 4  # 2..8
    group_size: int = -1  # -1 = one grid per output channel; else columns per group (the last one may be narrower)
    sym: bool = False
    mse: bool = False  # grid search over shrink factors
    mse_norm: float = 2.4  # the search's error Σ|q − w|^mse_norm (2.4: reference GPTQ/TACQ; 2: squared error)
    act_order: bool = False
    static_groups: bool = False
    damp: float = 0.01  # fraction of mean(diag H) added to H's diagonal
    block_size: int = 128
    keep_fraction: float = 0.0035  # TACQ: share of quantized weights kept in 16-bit, in [0, 0.5]
    true_sequential: bool = True
    grad_dtype: str = "float32"  # TACQ: dtype of the backward pass (the official code runs it in fp32)
    gradient_checkpointing: bool = True  # TACQ: gradients with one decoder block on the device at a time
    hessian_dtype: str = "float64"  # GPTQ/TACQ: H summed and factored in it (float64: independent of thread count)

    @property
    def gradients(self) -> GradientSettings:
        return GradientSettings(dtype=getattr(torch, self.grad_dtype), checkpointing=self.gradient_checkpointing)

    @property
    def grid(self) -> GridSpec:
        return GridSpec(bits=self.bits, sym=self.sym, mse=self.mse, mse_norm=self.mse_norm)

    @property
    def gptq(self) -> GPTQSettings:
        return GPTQSettings(
            grid=self.grid,
            group_size=self.group_size,
            act_order=self.act_order,
            static_groups=self.static_groups,
            damp=self.damp,
            block_size=self.block_size,
            hessian_dtype=self.hessian_dtype,
        )


def _settings_problem(cfg: QuantConfig) -> str | None:
    if cfg.method not in METHOD_NAMES:
        return (
            f"quantization method {cfg.method!r} is unknown; use one of {', '.join(METHOD_NAMES)} "
            "(checkpoint is loaded by the pipeline, not quantized)"
        )
    if isinstance(cfg.bits, bool) or not isinstance(cfg.bits, int) or not 2 <= cfg.bits <= 8:
        return f"bits={cfg.bits!r} is outside 2-8; use an integer bit width from 2 to 8"
    if isinstance(cfg.group_size, bool) or not isinstance(cfg.group_size, int) or not (
        cfg.group_size == -1 or cfg.group_size >= 1
    ):
        return (
            f"group_size={cfg.group_size!r} is invalid; "
            "use -1 (one grid per output channel) or a positive number of input columns, e.g. 128"
        )
    if not cfg.mse_norm > 0:
        return f"mse_norm={cfg.mse_norm!r} must be positive; 2.4 is the reference GPTQ norm, 2 is squared error"
    if not 0 <= cfg.keep_fraction <= 0.5:
        return (
            f"keep_fraction={cfg.keep_fraction!r} is outside [0, 0.5]; "
            "TACQ keeps a small share of weights, e.g. 0.0035"
        )
    if not cfg.damp > 0:
        return f"damp={cfg.damp!r} must be positive; the usual value is 0.01 (a fraction of mean(diag H))"
    if isinstance(cfg.block_size, bool) or not isinstance(cfg.block_size, int) or cfg.block_size < 1:
        return f"block_size={cfg.block_size!r} must be a positive integer, e.g. 128"
    return None


def validate(model: nn.Module, cfg: QuantConfig) -> None:
    """Cheap checks before any expensive work; raises ValueError with one line naming the problem and the fix."""
    problem = _settings_problem(cfg)
    if problem:
        raise ValueError(problem)
    if cfg.method == "none":
        return
    family_of(model)  # the decoder blocks must be found before any expensive work
