"""Noise floor: the baseline against itself under a perturbation that exists in practice (batch size, dtype)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import torch

from flipbench import models
from flipbench.answerkl import token_kl_stage
from flipbench.config import FlipbenchConfig
from flipbench.pairing import pair
from flipbench.side import evaluate_side


def noise_dtype(requested: str, model) -> str:
    """The noise floor's other dtype; ``auto`` flips between float32 and bfloat16."""
    if requested != "auto":
        return requested
    return "bfloat16" if next(model.parameters()).dtype == torch.float32 else "float32"


def noise_floor(model, tokenizer, task_objs, plan, cfg: FlipbenchConfig, base: pd.DataFrame, reference):
    """The baseline against itself under ``eval.noise_floor``: (annotated samples with token KL, details).

    ``batch`` re-evaluates the loaded baseline at ``eval.noise_batch_size``; ``dtype`` loads a second copy of the
    baseline in ``eval.noise_dtype`` (it needs the memory of that copy while it runs); ``batch_dtype`` does both.
    """
    from flipbench import metrics

    mode = cfg.eval.noise_floor
    batch = cfg.eval.noise_batch_size if mode in ("batch", "batch_dtype") else cfg.eval.batch_size
    base_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    other, dtype = model, base_dtype
    if mode in ("dtype", "batch_dtype"):
        dtype = noise_dtype(cfg.eval.noise_dtype, model)
        other = models.load_model(replace(cfg.model, dtype=dtype), tokenizer=tokenizer)[0]
    noise = metrics.annotate(pair(base, evaluate_side(other, tokenizer, task_objs, plan, cfg, batch_size=batch)))
    # the KL pass runs at the perturbed batch size too, so a batch perturbation reaches the token KL
    token_kl_stage(noise, other, tokenizer, replace(cfg, eval=replace(cfg.eval, batch_size=batch)), reference, model)
    details = {"mode": mode, "batch_size": batch, "dtype": dtype, "baseline_batch_size": cfg.eval.batch_size,
               "baseline_dtype": base_dtype}
    return noise, details
