"""Engines: what runs a side's model for lm-eval. Scoring is lm-eval's own on every engine.

- ``hf``: lm-eval's HFLM around the model object flipbench loaded (and compressed) in this process.
- ``vllm``: lm-eval's vLLM model on a folder (model.path for the baseline; a compressed side made in this process
  is saved first, :func:`save_served`).
- ``server``: lm-eval's OpenAI-compatible completions model against ``engine.base_url``.

The pipeline calls :func:`check` in preflight (before any weight is read), :func:`build_lm` per side and
:func:`release` when a side is done (a vLLM engine holds its memory until it is shut down).
"""

from __future__ import annotations

import logging
from pathlib import Path

from flipbench.config import ConfigError, FlipbenchConfig

log = logging.getLogger(__name__)


def check(cfg: FlipbenchConfig) -> None:
    """Preflight: the engine is installed (else one line naming the command that installs it), a server is
    reachable. Raises ConfigError; never reads a weight."""
    if cfg.engine.name == "hf":
        return
    raise ConfigError(f"engine={cfg.engine.name} is not available in this build; use engine=hf")


def needs_folder(cfg: FlipbenchConfig) -> bool:
    """True when the engine loads the model from a folder rather than taking the in-process model object."""
    return cfg.engine.name == "vllm"


def build_lm(cfg: FlipbenchConfig, *, model=None, tokenizer=None, path: str | None = None, batch_size: int):
    """An lm-eval LM for one side: HFLM around ``model`` for hf; the engine's model on ``path`` otherwise."""
    if cfg.engine.name == "hf":
        from flipbench.evaluate import build_lm as build_hf

        return build_hf(model, tokenizer, batch_size)
    raise ConfigError(f"engine={cfg.engine.name} is not available in this build; use engine=hf")


def release(lm) -> None:
    """Free what the side's engine holds (a vLLM engine's memory and workers); nothing for hf."""


def save_served(model, tokenizer, folder: Path, cfg: FlipbenchConfig, grids: dict | None = None) -> Path:
    """Save a compressed side made in this process where the engine can load it (engine.serve_format)."""
    raise ConfigError(f"engine={cfg.engine.name} cannot serve an in-process model in this build; use engine=hf")


def identity(cfg: FlipbenchConfig) -> dict:
    """The engine's name, settings and version: part of a side's artifact and of the baseline cache key."""
    return {"name": cfg.engine.name}
