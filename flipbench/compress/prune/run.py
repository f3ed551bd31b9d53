"""Run one pruning method on a model in place and measure what it left (the registry's pruning entry)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from flipbench.compress.families import decoder_layers, family_of
from flipbench.compress.prune import measure
from flipbench.compress.prune.config import PruneConfig
from flipbench.compress.prune.layerdrop import drop_layers, select_layers
from flipbench.compress.prune.magnitude import magnitude_model
from flipbench.compress.prune.masks import Pattern
from flipbench.compress.prune.sparsegpt import sparsegpt_model
from flipbench.compress.prune.wanda import wanda_model


def needs_calibration(cfg: PruneConfig) -> bool:
    return cfg.method in ("wanda", "sparsegpt") or (cfg.method == "layerdrop" and cfg.select == "angular")


def prune(
    model: nn.Module,
    cfg: PruneConfig,
    calib: torch.Tensor | None,
    device,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Prune model in place with cfg.method; returns the JSON-able report (settings, measured sparsity, size)."""
    start = measure.before(model)
    kept = list(range(len(decoder_layers(model, family_of(model)))))
    pattern, retries, unreached, dropped = cfg.nm, {}, [], []
    clock = time.perf_counter()
    if cfg.method == "magnitude":
        magnitude_model(model, cfg.sparsity, pattern, cfg.scope)
    elif cfg.method == "wanda":
        unreached = wanda_model(model, calib, cfg.sparsity, pattern, device, cfg.true_sequential, progress)
    elif cfg.method == "sparsegpt":
        retries, unreached = sparsegpt_model(model, calib, cfg.sparsegpt, device, cfg.true_sequential, progress)
    else:
        dropped = select_layers(model, cfg.n_layers, cfg.select, calib, device, progress)
        drop_layers(model, dropped)
        kept = [index for index in kept if index not in dropped]
        pattern = Pattern()
    seconds = time.perf_counter() - clock
    settings = {"sparsity": cfg.sparsity if not pattern.structured else pattern.sparsity}
    if cfg.method == "magnitude":
        settings["scope"] = cfg.scope
    if cfg.method in ("wanda", "sparsegpt"):
        # an expert no calibration token reached is pruned by magnitude alone: say which, for both methods
        settings |= {"true_sequential": cfg.true_sequential, "n_unreached_magnitude": len(unreached),
                     "unreached_magnitude": unreached}
    if cfg.method == "sparsegpt":
        settings |= {"block_size": cfg.block_size, "damp": cfg.damp, "bits": cfg.bits, "sym": cfg.sym,
                     "damp_retries": int(sum(retries.values())), "damp_retries_by_layer": retries}
    if cfg.method == "layerdrop":
        settings = {"n_layers": cfg.n_layers, "select": cfg.select, "dropped_layers": dropped}
    bits = cfg.bits if cfg.method == "sparsegpt" else None
    return ({"method": cfg.method, "seconds": {cfg.method: seconds}} | settings
            | measure.prune_report(model, start, kept, pattern, bits, cfg.sym))
