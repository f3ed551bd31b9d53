"""Typed configuration schema. Hydra composes ``conf/``; this module is the only place that knows its shape.

The schema is registered in Hydra's ConfigStore, so an unknown key or a value of the wrong type fails while
the config is composed, and :func:`validate` checks ranges and cross-field rules before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A user-facing configuration problem: one line naming the problem and the fix."""


STANDARD_TASKS = ("mmlu", "hellaswag", "arc_easy", "arc_challenge", "gsm8k")


@dataclass
class ModelConfig:
    name: str = "tiny"  # short tag used in run ids and reports
    path: str = MISSING  # hub id, local directory, or "bundled:tiny"
    revision: Optional[str] = None
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto picks CUDA when present
    trust_remote_code: bool = False


@dataclass
class CompressionConfig:
    method: str = "rtn"  # none | rtn | gptq | tacq | checkpoint
    bits: int = 4
    group_size: int = -1  # -1: one grid per output channel
    sym: bool = False
    mse: bool = False
    act_order: bool = False
    static_groups: bool = False
    damp: float = 0.01
    block_size: int = 128
    keep_fraction: float = 0.0035
    true_sequential: bool = True
    path: Optional[str] = None  # checkpoint: the compressed model's directory or hub id


@dataclass
class CalibrationConfig:
    source: str = "task"  # task: the evaluated tasks' own non-evaluation docs | text: a text file
    path: Optional[str] = None  # text file for source=text
    n_samples: int = 64
    seq_len: int = 256
    gradient_source: str = "task"  # TACQ saliency gradients: task | text (the paper's ablation)


@dataclass
class SuiteConfig:
    name: str = "tiny"
    tasks: List[str] = field(default_factory=lambda: ["synth"])
    include_path: Optional[str] = None  # a folder of the user's lm-eval task YAML
    limit: Optional[int] = None  # first N docs of every task
    num_fewshot: Dict[str, int] = field(default_factory=dict)  # per task name
    # task -> local file in the hub dataset's schema. The standard tasks are declared (unset) so that
    # `suite.data_files.gsm8k=...` needs no leading '+'; other tasks take `+suite.data_files.NAME=...`.
    data_files: Dict[str, Optional[str]] = field(default_factory=lambda: dict.fromkeys(STANDARD_TASKS))
    metrics: Dict[str, List[str]] = field(default_factory=dict)  # task -> metrics, first is the headline
    subject_groups: List[str] = field(default_factory=lambda: ["mmlu"])  # groups reported as one task
    subject_field: str = "subject"  # doc field that names a task's groups (synth_mmlu)


@dataclass
class EvalConfig:
    batch_size: int = 16
    seed: int = 1234
    bootstrap: int = 1000  # paired-bootstrap resamples for the confidence intervals
    token_kl: bool = True  # token-level KL for generative tasks (one extra forward pass per side)
    # The baseline's answer-token log-probs are kept (and cached with the baseline) up to this size; above it
    # the baseline is reloaded after compression for the KL pass instead.
    token_kl_reference_mb: int = 2048
    noise_floor: bool = False  # also evaluate the baseline at noise_batch_size and report its flips
    noise_batch_size: int = 1
    cache: bool = True  # reuse cached baseline samples


@dataclass
class GateConfig:
    max_flips: Optional[float] = None
    max_lost: Optional[float] = None
    max_acc_drop: Optional[float] = None
    max_kl_mean: Optional[float] = None
    per_task: Dict[str, Dict[str, float]] = field(default_factory=dict)


@dataclass
class OutputConfig:
    root: str = "results"
    run_id: Optional[str] = None  # default: UTC timestamp + model/method/bits tag
    run_dir: Optional[str] = None  # set by sweeps: the member's directory inside the sweep
    redo: bool = False  # re-run a sweep member whose directory already holds a complete run
    plots: bool = True
    save_model: bool = False  # write the compressed model into <run>/model (packed for RTN/GPTQ, dense for TACQ)


@dataclass
class FlipbenchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def register() -> None:
    ConfigStore.instance().store(name="flipbench_schema", node=FlipbenchConfig)


METHODS = ("none", "rtn", "gptq", "tacq", "checkpoint")
DTYPES = ("auto", "float32", "bfloat16", "float16")
GATE_KEYS = ("max_flips", "max_lost", "max_acc_drop", "max_kl_mean")


def to_typed(cfg: DictConfig | FlipbenchConfig) -> FlipbenchConfig:
    """Turn a composed config into the typed dataclass tree, validated."""
    typed = cfg if isinstance(cfg, FlipbenchConfig) else OmegaConf.to_object(cfg)
    typed.suite.data_files = {task: path for task, path in typed.suite.data_files.items() if path}
    validate(typed)
    return typed


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: FlipbenchConfig) -> None:
    """Range and cross-field checks: cheap, before any model or dataset loads."""
    comp, cal, ev = cfg.compression, cfg.calibration, cfg.eval
    _check(comp.method in METHODS, f"compression.method={comp.method!r} is unknown; use one of {', '.join(METHODS)}")
    if comp.method in ("rtn", "gptq", "tacq"):
        _check(2 <= comp.bits <= 8, f"compression.bits={comp.bits} is outside 2-8; pick a bit width from 2 to 8")
        _check(comp.group_size == -1 or comp.group_size > 0,
               f"compression.group_size={comp.group_size} is invalid; use -1 (per channel) or a positive column count")
        _check(0.0 <= comp.keep_fraction <= 0.5,
               f"compression.keep_fraction={comp.keep_fraction} is outside [0, 0.5]; TACQ keeps a small share, e.g. 0.0035")
        _check(comp.damp > 0, f"compression.damp={comp.damp} must be positive, e.g. 0.01")
        _check(comp.block_size > 0, f"compression.block_size={comp.block_size} must be positive, e.g. 128")
    if comp.method == "checkpoint":
        _check(bool(comp.path), "compression=checkpoint needs compression.path=<model directory or hub id>")
    _check(cfg.model.dtype in DTYPES, f"model.dtype={cfg.model.dtype!r} is unknown; use one of {', '.join(DTYPES)}")
    _check(cal.source in ("task", "text"), f"calibration.source={cal.source!r} is unknown; use task or text")
    _check(cal.gradient_source in ("task", "text"),
           f"calibration.gradient_source={cal.gradient_source!r} is unknown; use task or text")
    needs_text = cal.source == "text" or (comp.method == "tacq" and cal.gradient_source == "text")
    _check(not needs_text or bool(cal.path), "calibration from text needs calibration.path=<text file>")
    _check(cal.n_samples > 0 and cal.seq_len > 0, "calibration.n_samples and calibration.seq_len must be positive")
    _check(ev.batch_size > 0, f"eval.batch_size={ev.batch_size} must be positive")
    _check(ev.token_kl_reference_mb >= 0, f"eval.token_kl_reference_mb={ev.token_kl_reference_mb} must be >= 0 (0 never keeps it)")
    _check(ev.bootstrap >= 0, f"eval.bootstrap={ev.bootstrap} must be >= 0 (0 disables the intervals)")
    _check(len(cfg.suite.tasks) > 0, "suite.tasks is empty; name at least one task, e.g. TASKS=synth_mmlu")
    _check(cfg.suite.limit is None or cfg.suite.limit > 0, f"suite.limit={cfg.suite.limit} must be positive")
    if cfg.output.save_model:
        _check(comp.method in ("rtn", "gptq", "tacq"), f"output.save_model=true saves a model quantized here; "
               f"compression={comp.method} has none to save (use compression=rtn, gptq or tacq)")
        _check(not (comp.act_order and comp.group_size != -1 and not comp.static_groups and comp.method != "tacq"),
               "output.save_model with compression.act_order=true and groups needs compression.static_groups=true "
               "(compressed-tensors stores groups in column order, without g_idx)")
    for task, limits in cfg.gate.per_task.items():
        for key in limits:
            _check(key in GATE_KEYS, f"gate.per_task.{task}.{key} is unknown; use one of {', '.join(GATE_KEYS)}")
