"""Typed configuration schema. Hydra composes ``conf/``; this module is the only place that knows its shape.

The schema is registered in Hydra's ConfigStore, so an unknown key or a value of the wrong type fails while
the config is composed, and :func:`validate` checks ranges and cross-field rules before any model loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A user-facing configuration problem: one line naming the problem and the fix."""


STANDARD_TASKS = ("mmlu", "hellaswag", "arc_easy", "arc_challenge", "gsm8k")


@dataclass
class ModelConfig:
    name: str = "tiny"  # short tag used in run ids and reports
    path: str = MISSING  # hub id, local directory, or "bundled:tiny"
    revision: Optional[str] = None  # hub revision (branch, tag or commit) of model.path
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto picks CUDA when present
    trust_remote_code: bool = False  # let transformers run the model repository's own code
    # Placement by accelerate (from_pretrained): auto | balanced | sequential | cpu | {module: device}; None: the
    # whole model on model.device. max_memory: {device: size} ("0": 20GiB, cpu: 60GiB); offload_folder: disk offload.
    device_map: Optional[Any] = None
    max_memory: Dict[str, str] = field(default_factory=dict)  # with device_map: {device: size}, e.g. {"0": 20GiB, cpu: 60GiB}
    offload_folder: Optional[str] = None  # with device_map: a folder for weights offloaded to disk
    gguf_file: Optional[str] = None  # a GGUF file (path, or name inside model.path), dequantized on load


@dataclass
class CompressionConfig:
    """One config per method, selected with compression=<method> (conf/compression/<method>.yaml); each holds only
    the keys its method reads, so another method's key is refused naming the methods that have it."""

    method: str = MISSING  # set by compression=<method> (none, rtn, gptq, tacq, magnitude, wanda, sparsegpt, ...)


# Keys shared by several methods, one mixin each. A method's bases are listed last-key-first: dataclasses collect
# fields from the last base up, so the keys read in the order method, then the mixins from right to left.
@dataclass
class _Grid:
    bits: int = 4  # bits per quantized weight, 2-8
    group_size: int = -1  # -1: one grid per output channel; else input columns per grid (the last may be narrower)
    sym: bool = False  # symmetric grid (no zero point)
    mse: bool = False  # search the grid's shrink factor for the least error (mse_norm)
    mse_norm: float = 2.4  # MSE search error Σ|q − w|^mse_norm; 2.4 as reference GPTQ/TACQ, 2 = squared error


@dataclass
class _Sparsity:
    sparsity: float = 0.5  # share of each pruned linear's weights set to 0, in [0, 1)
    pattern: str = "unstructured"  # unstructured | N:M (N kept in every M input columns, e.g. 2:4, 4:8)


@dataclass
class _Hessian:
    damp: float = 0.01  # fraction of mean(diag H) added to H's diagonal
    block_size: int = 128  # columns per block of the column sweep


@dataclass
class _Sequential:
    true_sequential: bool = True  # later linears of a block see the earlier ones already compressed


@dataclass
class _OnDevice:
    device: str = "auto"  # where the compressor works on one decoder block at a time; auto picks CUDA when present


@dataclass
class _Replicas:
    # Compression noise (flipbench/replicas.py): compress K times with calibration seeds calibration.seed + r, each
    # replica evaluated on the same docs; replica 0 is the run's compressed side.
    replicas: int = 1
    replica_threads: List[int] = field(default_factory=list)  # torch threads per replica (cycled), e.g. [1, 2]


@dataclass
class NoneConfig(CompressionConfig):
    """No compression: the baseline against itself (flips must be 0)."""

    method: str = "none"


@dataclass
class RtnConfig(_OnDevice, _Grid, CompressionConfig):
    """Round-to-nearest on the grid; no data."""

    method: str = "rtn"


@dataclass
class GptqConfig(_Replicas, _OnDevice, _Sequential, _Hessian, _Grid, CompressionConfig):
    """GPTQ: layer-wise second-order error compensation on calibration data."""

    method: str = "gptq"
    act_order: bool = False  # quantize columns in order of decreasing Hessian diagonal
    static_groups: bool = False  # with act_order and groups: grids fitted before the sweep, in column order
    # H summed and factored in float64 (the column sweep stays float32): the weights then do not depend on the thread
    # count (docs/compression-noise.md); float32 halves H's memory
    hessian_dtype: str = "float64"


@dataclass
class TacqConfig(GptqConfig):
    """TACQ: GPTQ plus a task-salient share of the weights kept in 16-bit; grids as the official code fits them."""

    method: str = "tacq"
    bits: int = 3
    mse: bool = True
    keep_fraction: float = 0.0035  # share of quantized weights kept in 16-bit, in [0, 0.5]
    grad_dtype: str = "float32"  # the saliency's backward pass (the official code runs it in fp32)
    gradient_checkpointing: bool = True  # gradients one block on the device at a time (recomputed)


@dataclass
class MagnitudeConfig(_OnDevice, _Sparsity, CompressionConfig):
    """Magnitude pruning: the smallest |W| set to 0; no data."""

    method: str = "magnitude"
    scope: str = "row"  # row: compare within each output row | global: over all pruned linears (unstructured only)


@dataclass
class WandaConfig(_Replicas, _OnDevice, _Sequential, _Sparsity, CompressionConfig):
    """Wanda: prune by |W_ij|·‖X_j‖₂ on calibration activations, per output row."""

    method: str = "wanda"


@dataclass
class SparseGPTConfig(_Replicas, _OnDevice, _Sequential, _Hessian, _Sparsity, CompressionConfig):
    """SparseGPT: OBS pruning with weight reconstruction on GPTQ's Hessian, optionally quantizing what is kept."""

    method: str = "sparsegpt"
    bits: Optional[int] = None  # null prunes only; 2-8 also quantizes the surviving weights (one grid per row)
    sym: bool = False  # with bits: symmetric grid (no zero point)


@dataclass
class LayerDropConfig(_Replicas, _OnDevice, CompressionConfig):
    """Layer dropping: remove decoder blocks, the last ones or the least-changing by angular distance."""

    method: str = "layerdrop"
    n_layers: int = 1  # decoder blocks removed
    select: str = "last"  # last | angular (the consecutive blocks whose input and output are closest in angle)


@dataclass
class CheckpointConfig(CompressionConfig):
    """A compressed model made elsewhere (pruned, externally quantized), evaluated against the baseline."""

    method: str = "checkpoint"
    path: Optional[str] = None  # the compressed model's directory or hub id
    gguf_file: Optional[str] = None  # a GGUF file (path, or name inside compression.path)


# compression=<method> -> its schema (conf/compression/<method>.yaml names it in its defaults list)
METHOD_CONFIGS: Dict[str, type] = {"none": NoneConfig, "rtn": RtnConfig, "gptq": GptqConfig, "tacq": TacqConfig,
                                   "magnitude": MagnitudeConfig, "wanda": WandaConfig, "sparsegpt": SparseGPTConfig,
                                   "layerdrop": LayerDropConfig, "checkpoint": CheckpointConfig}


@dataclass
class CalibrationConfig:
    source: str = "task"  # task: the evaluated tasks' own non-evaluation docs | text: a text file
    path: Optional[str] = None  # text file for source=text
    n_samples: int = 64  # calibration sequences
    seq_len: int = 256  # tokens per calibration sequence
    gradient_source: str = "task"  # TACQ saliency gradients: task | text (the paper's ablation)
    seed: Optional[int] = None  # calibration draws; None: eval.seed (replica r draws with seed + r)


@dataclass
class SuiteConfig:
    name: str = "tiny"
    tasks: List[str] = field(default_factory=lambda: ["synth"])
    include_path: Optional[str] = None  # a folder of the user's lm-eval task YAML
    limit: Optional[int] = None  # first N docs of every task
    task_limits: Dict[str, int] = field(default_factory=dict)  # task -> first N docs of each of its leaves (over limit)
    # Evaluate a seeded random share of each task's docs (those the limits select): the first ceil(share * N) in the
    # sequential gate's order (eval.seed), the baseline taken from its full cached run. The budget search's
    # screening rungs (docs/search.md); None: every doc.
    sample: Optional[float] = None
    num_fewshot: Dict[str, int] = field(default_factory=dict)  # per task name
    # task -> local data in the hub dataset's schema: one file, a {split: file} mapping or a hub-layout folder
    # (flipbench/datafiles.py). Like every mapping key, an entry needs no '+': suite.data_files.NAME=...
    data_files: Dict[str, Any] = field(default_factory=lambda: dict.fromkeys(STANDARD_TASKS))
    # task -> generation budget in tokens (lm-eval's max_gen_toks) for generative tasks, e.g. to fit a short context.
    max_gen_toks: Dict[str, Optional[int]] = field(default_factory=lambda: dict.fromkeys(STANDARD_TASKS))
    metrics: Dict[str, List[str]] = field(default_factory=dict)  # task -> metrics, first is the headline
    # task -> when a doc counts as correct under a continuous headline metric: a comparison and a threshold,
    # e.g. ">=0.5" (F1), "<=0.25" (brier_score, lower is better). 0/1 metrics (acc, exact_match, ...) need none.
    correct_if: Dict[str, str] = field(default_factory=dict)
    # Chat models: prompts through the tokenizer's chat template (lm-eval's apply_chat_template), the same on both
    # sides: true | false | auto (on when the tokenizer has a template)
    chat_template: str = "false"
    system_prompt: Optional[str] = None  # with a chat template: the system message
    fewshot_as_multiturn: bool = True  # with a chat template: few-shot examples as earlier user/assistant turns
    think_end: Optional[str] = None  # reasoning models: answers are what follows this marker (e.g. "</think>")
    subject_groups: List[str] = field(default_factory=lambda: ["mmlu"])  # groups reported as one task
    subject_field: str = "subject"  # doc field that names a task's groups (synth_mmlu)


@dataclass
class EvalConfig:
    batch_size: int = 16  # lm-eval batch size, the same on both sides
    seed: int = 1234  # few-shot draws, calibration draws, bootstrap
    bootstrap: int = 1000  # paired-bootstrap resamples for the confidence intervals
    token_kl: bool = True  # token-level KL for generative tasks (one extra forward pass per side)
    # The baseline's answer-token log-probs are kept (and cached with the baseline) up to this size; above it
    # the baseline is reloaded after compression for the KL pass instead.
    token_kl_reference_mb: int = 2048
    # Per answer token the reference keeps the baseline's top-k log-probs and ids (KL then reported as a lower
    # bound with an upper bound beside it); 0, or k >= vocabulary / 2, keeps the full distribution (exact).
    token_kl_topk: int = 256
    # Token KL and agreement also over the prompt's own tokens (prefill; same forward pass), reported apart from the
    # answer's; its baseline reference shares token_kl_reference_mb, and is skipped when it does not fit it.
    prefill_kl: bool = True
    # Noise floor: the baseline against itself under a perturbation that exists in practice. off | batch
    # (noise_batch_size) | dtype (a second copy loaded in noise_dtype) | batch_dtype (both at once).
    noise_floor: str = "off"
    noise_batch_size: int = 1  # the noise floor's other batch size (batch, batch_dtype)
    noise_dtype: str = "auto"  # auto: bfloat16 when the baseline runs in float32, else float32
    cache: bool = True  # reuse cached baseline samples


@dataclass
class GateConfig:
    max_flips: Optional[float] = None
    max_lost: Optional[float] = None
    max_acc_drop: Optional[float] = None
    max_choice_kl_mean: Optional[float] = None  # nats; multiple-choice tasks (choice KL over raw log-likelihoods)
    max_token_kl_mean: Optional[float] = None  # nats; generative tasks (token KL over the vocabulary)
    # share of docs with a non-finite log-prob on either side; None: none allowed once any limit is set
    max_nonfinite: Optional[float] = None
    on: str = "point"  # point: estimates meet the limits | upper_ci: the pessimistic 95% bound meets them
    per_task: Dict[str, Dict[str, float]] = field(default_factory=dict)
    # sequential gate (flipbench/sequential.py, docs/sequential.md): docs in a seeded random order, chunk by chunk,
    # stopping when exact without-replacement bounds decide every proportion check (flips, lost, acc drop)
    sequential: bool = False
    chunk: Optional[int] = None  # docs per task per look; None: 10% of the task's docs, at least 50
    sequential_all: bool = False  # decide every task (default: stop at the first task that fails)
    alpha: float = 0.05  # error budget of the sequential decision, split over tasks x checks x looks
    stratify: bool = True  # the seeded order interleaves the subjects in proportion (every prefix balanced)
    kl_clip: Optional[float] = None  # nats; choice KL is bounded as min(KL, kl_clip); None: 10 x the limit
    sequential_docs: Optional[int] = None  # stop each task after this many docs (up to a whole look); None: all
    # retired: one KL limit cannot serve two scales; kept in the schema only to refuse it with the new names
    max_kl_mean: Optional[float] = None


@dataclass
class EngineConfig:
    """What runs the model for lm-eval (flipbench/engines.py). Scoring is lm-eval's own on every engine."""

    name: str = "hf"  # hf: lm-eval's HF model in this process | vllm: lm-eval's vLLM model | server: an endpoint
    # vllm (model.dtype is the engine's dtype)
    tensor_parallel_size: int = 1
    gpu_memory_utilization: Optional[float] = None  # None: 0.9 on a GPU, 0.2 of host memory on vLLM's CPU backend
    max_model_len: Optional[int] = None  # vLLM context length; None: the model's
    max_num_seqs: Optional[int] = None  # vLLM sequences per step; None: vLLM's default
    enforce_eager: bool = False  # vLLM: no CUDA graphs (less memory, slower)
    # Token KL on vllm/server: log-probs per token asked of the engine on both sides (the baseline's reference keeps
    # min(eval.token_kl_topk, this); the compressed side's top-k gives partial bounds). -1: the compressed side's
    # full vocabulary (tokenkl's top-k bounds; V entries per prompt token, slow for large vocabularies)
    max_logprobs: int = 20
    # server: an OpenAI-compatible completions endpoint (a vLLM server, or the endpoint that will ship)
    base_url: Optional[str] = None  # e.g. http://127.0.0.1:8000/v1/completions
    served_model: Optional[str] = None  # the model id the server serves; default: the one it reports
    num_concurrent: int = 1  # requests in flight to the server
    max_retries: int = 3  # retries of a failed request
    timeout_s: float = 300.0  # seconds one request may take
    # A compressed side made in this process is saved and served from there: dense (the fake-quantized
    # weights in the baseline's dtype) | packed (compressed-tensors: the kernels that will serve it)
    serve_format: str = "dense"


@dataclass
class OutputConfig:
    root: str = "results"  # where runs, sweeps, artifacts and the baseline cache go
    run_id: Optional[str] = None  # default: UTC timestamp + model/method/bits tag
    run_dir: Optional[str] = None  # set by sweeps: the member's directory inside the sweep
    redo: bool = False  # re-run a sweep member whose directory already holds a complete run
    plots: bool = True  # write plots/*.png and embed them in the reports
    save_model: bool = False  # write the compressed model into <run>/model (packed for RTN/GPTQ, dense for TACQ)
    # flipbench collect: the side's artifact folder (a shard goes into <artifact>/shard-I-of-N)
    artifact: Optional[str] = None
    # flipbench collect side=compressed: the baseline's artifact, whose answers the compressed side scores for
    # token KL (without it compare reports token KL as not available)
    baseline_artifact: Optional[str] = None


@dataclass
class FlipbenchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    compression: CompressionConfig = field(default_factory=RtnConfig)  # conf/config.yaml selects rtn too
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    side: Optional[str] = None  # flipbench collect: baseline | compressed
    shard: Optional[str] = None  # flipbench collect: I/N, the I-th (0-based) of N shards of every task's docs


def register() -> None:
    """The schema in Hydra's ConfigStore: the root (its compression left for the selected group option to fill), and
    each method's config as ``schema/compression/<method>``, which ``conf/compression/<method>.yaml`` extends."""
    store = ConfigStore.instance()
    root = OmegaConf.structured(FlipbenchConfig)
    root.compression = MISSING  # typed CompressionConfig: compression=<method> merges its subclass in
    store.store(name="flipbench_schema", node=root)
    for method, schema in METHOD_CONFIGS.items():
        store.store(group="schema/compression", name=method, node=schema)


QUANT_METHODS = ("rtn", "gptq", "tacq")
PRUNE_METHODS = ("magnitude", "wanda", "sparsegpt", "layerdrop")
METHODS = ("none", *QUANT_METHODS, *PRUNE_METHODS, "checkpoint")
DTYPES = ("auto", "float32", "bfloat16", "float16")
NOISE_FLOORS = ("off", "batch", "dtype", "batch_dtype")
GATE_ON = ("point", "upper_ci")
GATE_KEYS = ("max_flips", "max_lost", "max_acc_drop", "max_choice_kl_mean", "max_token_kl_mean", "max_nonfinite")
RETIRED_GATE_KEYS = {"max_kl_mean": "KL has one scale per kind: use gate.max_choice_kl_mean (multiple-choice tasks) "
                                    "and/or gate.max_token_kl_mean (generative tasks), both in nats"}
# suite.correct_if.<task>: a comparison and a number, e.g. ">=0.5"
CORRECT_IF = r"\s*(>=|<=|>|<)\s*([-+]?(?:[0-9]*\.)?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"
# The compression keys each method has, from its schema (besides ``method``)
METHOD_KEYS = {method: tuple(f.name for f in dataclasses.fields(schema) if f.name != "method")
               for method, schema in METHOD_CONFIGS.items()}
ENGINES = ("hf", "vllm", "server")
SIDES = ("baseline", "compressed")
SERVE_FORMATS = ("dense", "packed")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``I/N`` -> (I, N) with 0 <= I < N; None when unsharded. A bad value is a ConfigError naming the form."""
    if text in (None, ""):
        return None
    parts = str(text).split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"shard={text!r} is not I/N; give the 0-based shard index and the shard count, e.g. shard=0/4") from None
    _check(count >= 1 and 0 <= index < count, f"shard={text} is out of range; I runs from 0 to N-1, e.g. shard=0/{max(count, 1)}")
    return index, count


def to_typed(cfg: DictConfig | FlipbenchConfig) -> FlipbenchConfig:
    """Turn a composed config into the typed dataclass tree, validated."""
    if not isinstance(cfg, FlipbenchConfig):
        check_keys(cfg)
    typed = cfg if isinstance(cfg, FlipbenchConfig) else OmegaConf.to_object(cfg)
    typed.suite.data_files = {task: path for task, path in typed.suite.data_files.items() if path}
    typed.suite.max_gen_toks = {task: n for task, n in typed.suite.max_gen_toks.items() if n is not None}
    typed.suite.chat_template = str(typed.suite.chat_template).lower()  # YAML's true arrives as "True"
    validate(typed)
    return typed


def schema_keys(schema: type = FlipbenchConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (dataclass fields, recursively; compression: every method's keys)."""
    keys = []
    for name, hint in typing.get_type_hints(schema).items():
        if hint is CompressionConfig:
            every = dict.fromkeys(k for schema_ in METHOD_CONFIGS.values() for k in schema_keys(schema_))
            keys += [f"{prefix}{name}.{key}" for key in every]
        elif dataclasses.is_dataclass(hint):
            keys += schema_keys(hint, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def suggest_key(key: str, keys: list[str] | None = None) -> str:
    """' (did you mean x.y?)' for the closest of ``keys`` (default: every schema key), or ''."""
    close = difflib.get_close_matches(key, schema_keys() if keys is None else keys, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def unknown_key_error(key: str, method: str | None = None) -> ConfigError:
    """An unknown key, with the closest valid ones (a compression key: among ``method``'s keys where it is known)."""
    keys = [f"compression.{k}" for k in ("method", *METHOD_KEYS[method])] if method in METHOD_KEYS else None
    return ConfigError(f"unknown config key '{key}'{suggest_key(key, keys)}; run `flipbench --help` for the valid keys")


def method_key_error(method: str, key: str) -> ConfigError | None:
    """``compression.<key>`` given to a method that has no such key: the error naming the methods that have it (None
    when no method has it: a typo, for :func:`unknown_key_error`)."""
    owners = [m for m, keys in METHOD_KEYS.items() if key in keys]
    if not owners:
        return None
    return ConfigError(f"compression.{key} is not a setting of compression={method}; it belongs to "
                       f"{', '.join(owners)} (drop it, or pick one of those methods)")


def check_keys(node: DictConfig, schema: type = FlipbenchConfig, prefix: str = "") -> None:
    """Keys the schema does not know are errors, however they were added: Hydra's ``+key=value`` adds them to a
    structured config without complaint, and OmegaConf.to_object then drops them silently (a gate typo such as
    ``+gate.max_flipz=0`` would switch the gate off). Under compression the schema is the selected method's."""
    if schema is CompressionConfig:  # composed: the group option's schema; saved (plain): its method's
        composed = OmegaConf.get_type(node)
        schema = composed if composed in METHOD_CONFIGS.values() else METHOD_CONFIGS.get(
            OmegaConf.select(node, "method", default=None), CompressionConfig)
    hints = typing.get_type_hints(schema)
    for key in node.keys():
        path = f"{prefix}{key}"
        if key not in hints:
            method = schema.method if schema in METHOD_CONFIGS.values() else None
            raise (method and method_key_error(method, key)) or unknown_key_error(path, method)
        if dataclasses.is_dataclass(hints[key]) and isinstance(node[key], DictConfig):
            check_keys(node[key], hints[key], path + ".")


def from_saved(saved: DictConfig | dict) -> DictConfig:
    """A config saved with a run or an artifact (config.yaml, the manifest's ``config``) over the schema, its
    compression as its method's config. Configs saved before there was one config per method hold every method's
    keys: those the method does not have are dropped (they were defaults it never read)."""
    saved = OmegaConf.create(OmegaConf.to_container(saved) if isinstance(saved, DictConfig) else saved)
    method = OmegaConf.select(saved, "compression.method", default="rtn")
    root = OmegaConf.structured(FlipbenchConfig)
    if method in METHOD_CONFIGS:
        saved.compression = {k: v for k, v in saved.get("compression", {}).items() if k in (
            "method", *METHOD_KEYS[method])}
        root.compression = MISSING
        root = OmegaConf.merge(root, {"compression": METHOD_CONFIGS[method]})
    return OmegaConf.merge(root, saved)


def check_gate_tasks(gate: GateConfig, tasks: list[str]) -> None:
    """``gate.per_task.<name>`` must name an evaluated task: a limit on a task that is not run checks nothing."""
    for task in gate.per_task:
        if task not in tasks:
            close = difflib.get_close_matches(task, tasks, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"gate.per_task.{task}: {task!r} is not a task of this run ({', '.join(tasks)}); "
                              f"{hint}name an evaluated task")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_pruning(comp: CompressionConfig) -> None:
    from flipbench.compress.prune.config import PruneConfig, settings_problem

    fields = {k: v for k, v in vars(comp).items() if k in PruneConfig.__dataclass_fields__}
    problem = settings_problem(PruneConfig(**fields))
    _check(problem is None, f"compression.{problem}")


def _validate_compression(cfg: FlipbenchConfig) -> None:
    """The selected method's own keys; a key it lacks is not there to check (the schema refused it)."""
    comp = cfg.compression
    _check(comp.method in METHODS, f"compression.method={comp.method!r} is unknown; use one of {', '.join(METHODS)}")
    selected = next((m for m, schema in METHOD_CONFIGS.items() if type(comp) is schema), comp.method)
    _check(selected == comp.method, f"compression.method={comp.method} does not match compression={selected}; pick "
           f"the method with compression={comp.method}")
    if isinstance(comp, _Grid):  # the quantizers
        _check(2 <= comp.bits <= 8, f"compression.bits={comp.bits} is outside 2-8; pick a bit width from 2 to 8")
        _check(comp.group_size == -1 or comp.group_size > 0,
               f"compression.group_size={comp.group_size} is invalid; use -1 (per channel) or a positive column count")
        _check(comp.mse_norm > 0, f"compression.mse_norm={comp.mse_norm} must be positive, e.g. 2.4 or 2")
    if isinstance(comp, GptqConfig):  # and TACQ
        _check(comp.damp > 0, f"compression.damp={comp.damp} must be positive, e.g. 0.01")
        _check(comp.block_size > 0, f"compression.block_size={comp.block_size} must be positive, e.g. 128")
        _check(comp.hessian_dtype in ("float32", "float64"),
               f"compression.hessian_dtype={comp.hessian_dtype!r} is unknown; use float64 or float32")
    if isinstance(comp, TacqConfig):
        _check(0.0 <= comp.keep_fraction <= 0.5,
               f"compression.keep_fraction={comp.keep_fraction} is outside [0, 0.5]; TACQ keeps a small share, e.g. 0.0035")
        _check(comp.grad_dtype in DTYPES[1:],
               f"compression.grad_dtype={comp.grad_dtype!r} is unknown; use one of {', '.join(DTYPES[1:])}")
    if comp.method in PRUNE_METHODS:
        _check_pruning(comp)
    if isinstance(comp, _Replicas):
        _check(comp.replicas >= 1, f"compression.replicas={comp.replicas} must be >= 1")
        _check(all(t >= 1 for t in comp.replica_threads), f"compression.replica_threads={comp.replica_threads} must "
               "list positive thread counts, e.g. [1,2]")
        replicated = comp.replicas > 1 or bool(comp.replica_threads)
        _check(not (comp.method == "layerdrop" and comp.select == "last" and replicated),
               "compression=layerdrop with select=last draws no calibration data: its replicas are identical by "
               "construction; drop compression.replicas (or use compression.select=angular)")
    if comp.method == "checkpoint":
        _check(bool(comp.path) or bool(comp.gguf_file),
               "compression=checkpoint needs compression.path=<model directory or hub id> (or compression.gguf_file)")
    if isinstance(comp, _OnDevice):
        _check(comp.device in ("auto", "cpu", "cuda", "mps") or comp.device.startswith("cuda:"),
               f"compression.device={comp.device!r} is unknown; use auto, cpu, cuda, cuda:N or mps")


def setting(comp: CompressionConfig, key: str, default: Any = None) -> Any:
    """A compression key where the method has it, else ``default``: for code that serves every method."""
    return getattr(comp, key, default)


def draws_calibration(comp: CompressionConfig) -> bool:
    """Does the method draw calibration data (so that its compression replicas can differ)?"""
    data_free = comp.method in ("none", "rtn", "magnitude", "checkpoint") or (
        comp.method == "layerdrop" and getattr(comp, "select", "last") == "last")
    return not data_free


def validate(cfg: FlipbenchConfig) -> None:
    """Range and cross-field checks: cheap, before any model or dataset loads."""
    comp, cal, ev = cfg.compression, cfg.calibration, cfg.eval
    _check(not cfg.gate.sequential or cfg.side is not None or any(getattr(cfg.gate, k) is not None for k in ("max_flips", "max_lost", "max_acc_drop")), "gate.sequential=true needs a proportion limit (gate.max_flips, gate.max_lost or gate.max_acc_drop)")
    _check(not cfg.gate.sequential or setting(comp, "replicas", 1) <= 1, "gate.sequential=true evaluates a prefix of the docs; compression.replicas needs every doc (use one or the other)")
    _check(0 < cfg.gate.alpha < 1 and (cfg.gate.chunk is None or cfg.gate.chunk >= 1), f"gate.alpha={cfg.gate.alpha} must be in (0, 1) and gate.chunk={cfg.gate.chunk} at least 1")
    _check((cfg.gate.kl_clip is None or cfg.gate.kl_clip > 0) and (cfg.gate.sequential_docs is None or cfg.gate.sequential_docs >= 1), f"gate.kl_clip={cfg.gate.kl_clip} must be above 0 and gate.sequential_docs={cfg.gate.sequential_docs} at least 1")
    _validate_compression(cfg)
    _check(cfg.model.device in ("auto", "cpu", "cuda", "mps") or cfg.model.device.startswith("cuda:"),
           f"model.device={cfg.model.device!r} is unknown; use auto, cpu, cuda, cuda:N or mps")
    _check(cfg.model.dtype in DTYPES, f"model.dtype={cfg.model.dtype!r} is unknown; use one of {', '.join(DTYPES)}")
    _check(cal.source in ("task", "text"), f"calibration.source={cal.source!r} is unknown; use task or text")
    _check(cal.gradient_source in ("task", "text"),
           f"calibration.gradient_source={cal.gradient_source!r} is unknown; use task or text")
    needs_text = cal.source == "text" or (comp.method == "tacq" and cal.gradient_source == "text")
    _check(not needs_text or bool(cal.path), "calibration from text needs calibration.path=<text file>")
    _check(cal.n_samples > 0 and cal.seq_len > 0, "calibration.n_samples and calibration.seq_len must be positive")
    _check(ev.batch_size > 0, f"eval.batch_size={ev.batch_size} must be positive")
    _check(ev.token_kl_reference_mb >= 0, f"eval.token_kl_reference_mb={ev.token_kl_reference_mb} must be >= 0 (0 never keeps it)")
    _check(ev.token_kl_topk >= 0, f"eval.token_kl_topk={ev.token_kl_topk} must be >= 0 (0 keeps the full vocabulary)")
    _check(ev.noise_floor in NOISE_FLOORS,
           f"eval.noise_floor={ev.noise_floor!r} is unknown; use one of {', '.join(NOISE_FLOORS)} (e.g. dtype)")
    _check(ev.noise_dtype in DTYPES, f"eval.noise_dtype={ev.noise_dtype!r} is unknown; use one of {', '.join(DTYPES)}")
    _check(ev.bootstrap >= 0, f"eval.bootstrap={ev.bootstrap} must be >= 0 (0 disables the intervals)")
    _check(str(cfg.suite.chat_template).lower() in ("true", "false", "auto"),
           f"suite.chat_template={cfg.suite.chat_template!r} is unknown; use true, false or auto")
    _check(len(cfg.suite.tasks) > 0, "suite.tasks is empty; name at least one task, e.g. TASKS=synth_mmlu")
    _check(cfg.suite.limit is None or cfg.suite.limit > 0, f"suite.limit={cfg.suite.limit} must be positive")
    _check(cfg.suite.sample is None or 0 < cfg.suite.sample <= 1, f"suite.sample={cfg.suite.sample} must be a share "
           "of the docs in (0, 1], e.g. 0.25")
    _check(cfg.suite.sample is None or not (cfg.gate.sequential or setting(comp, "replicas", 1) > 1 or cfg.side),
           "suite.sample evaluates a random share of the docs in one process; gate.sequential, compression.replicas "
           "and flipbench collect choose their docs themselves: use one or the other")
    for task, n in cfg.suite.task_limits.items():
        _check(n > 0, f"suite.task_limits.{task}={n} must be positive")
    _check(ev.noise_batch_size > 0, f"eval.noise_batch_size={ev.noise_batch_size} must be positive")
    for task, n in cfg.suite.max_gen_toks.items():
        _check(n is None or n > 0, f"suite.max_gen_toks.{task}={n} must be a positive number of tokens, e.g. 64")
    for task, shots in cfg.suite.num_fewshot.items():
        _check(shots >= 0, f"suite.num_fewshot.{task}={shots} must be >= 0")
    _check(cfg.gate.on in GATE_ON, f"gate.on={cfg.gate.on!r} is unknown; use point or upper_ci")
    _validate_engine(cfg)
    if cfg.output.save_model:
        _check(comp.method in ("rtn", "gptq", "tacq"), f"output.save_model=true saves a model quantized here; "
               f"compression={comp.method} has none to save (use compression=rtn, gptq or tacq)")
        _check(not (comp.method == "gptq" and comp.act_order and comp.group_size != -1 and not comp.static_groups),
               "output.save_model with compression.act_order=true and groups needs compression.static_groups=true "
               "(compressed-tensors stores groups in column order, without g_idx)")
    _validate_gate(cfg.gate)
    for task, rule in cfg.suite.correct_if.items():
        parse_correct_if(rule, f"suite.correct_if.{task}")


def parse_correct_if(rule: str, key: str = "suite.correct_if") -> tuple[str, float]:
    """``">=0.5"`` -> (">=", 0.5); anything else is a ConfigError naming the form."""
    match = re.fullmatch(CORRECT_IF, str(rule))
    _check(match is not None, f"{key}={rule!r} is not a comparison and a threshold; write e.g. '>=0.5' (higher is "
           "better) or '<=0.25' (lower is better)")
    return match.group(1), float(match.group(2))


def _validate_gate(gate: GateConfig) -> None:
    for key, why in RETIRED_GATE_KEYS.items():
        _check(getattr(gate, key) is None, f"gate.{key} is retired; {why}")
    limits = [(key, getattr(gate, key)) for key in GATE_KEYS]
    for task, task_limits in gate.per_task.items():
        for key in task_limits:
            if key in RETIRED_GATE_KEYS:
                raise ConfigError(f"gate.per_task.{task}.{key} is retired; {RETIRED_GATE_KEYS[key]}")
            if key not in GATE_KEYS:
                close = difflib.get_close_matches(key, GATE_KEYS, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ConfigError(f"gate.per_task.{task}.{key} is unknown; {hint}use one of {', '.join(GATE_KEYS)}")
        limits += [(f"per_task.{task}.{key}", value) for key, value in task_limits.items()]
    for key, value in limits:
        check_gate_limit(key, value)


def _validate_engine(cfg: FlipbenchConfig) -> None:
    engine = cfg.engine
    _check(engine.name in ENGINES, f"engine.name={engine.name!r} is unknown; use one of {', '.join(ENGINES)} (engine=vllm)")
    _check(engine.serve_format in SERVE_FORMATS,
           f"engine.serve_format={engine.serve_format!r} is unknown; use dense or packed")
    _check(engine.tensor_parallel_size >= 1, f"engine.tensor_parallel_size={engine.tensor_parallel_size} must be >= 1")
    _check(engine.gpu_memory_utilization is None or 0 < engine.gpu_memory_utilization <= 1,
           f"engine.gpu_memory_utilization={engine.gpu_memory_utilization} is outside (0, 1], e.g. 0.9")
    _check(engine.max_logprobs >= 1 or engine.max_logprobs == -1,
           f"engine.max_logprobs={engine.max_logprobs} must be >= 1 (e.g. 20), or -1 for the full vocabulary")
    _check(engine.num_concurrent >= 1, f"engine.num_concurrent={engine.num_concurrent} must be >= 1")
    if engine.name == "server":
        _check(bool(engine.base_url), "engine=server needs engine.base_url=http://HOST:PORT/v1/completions (the "
               "OpenAI-compatible completions endpoint)")
    _check(engine.name == "hf" or cfg.eval.noise_floor == "off",
           f"eval.noise_floor={cfg.eval.noise_floor} measures the HF evaluator against itself; use engine=hf with it")
    comp = cfg.compression
    if engine.name == "vllm" and engine.serve_format == "packed" and comp.method not in ("none", "checkpoint"):
        _check(comp.method in ("rtn", "gptq"), f"engine.serve_format=packed packs RTN and GPTQ weights "
               f"(compressed-tensors); compression={comp.method} has no packed format: use engine.serve_format=dense")
        _check(not (setting(comp, "act_order") and comp.group_size != -1 and not comp.static_groups),
               "engine.serve_format=packed with compression.act_order=true and groups needs compression.static_groups="
               "true (compressed-tensors stores groups in column order, without g_idx); or use engine.serve_format=dense")
    _check(cfg.side in (None, *SIDES), f"side={cfg.side!r} is unknown; use side=baseline or side=compressed")
    parse_shard(cfg.shard)


def check_gate_limit(key: str, value: float | None) -> None:
    """Fractions (flips, lost, accuracy drop) lie in [0, 1]; KL in nats is >= 0. A limit outside can never be
    met (or never fail), so it is a typo, refused before any evaluation."""
    if value is None:
        return
    if key.endswith("kl_mean"):
        _check(value >= 0, f"gate.{key}={value} must be >= 0 (nats), e.g. 0.05")
    else:
        _check(0 <= value <= 1, f"gate.{key}={value} is outside [0, 1]; give a fraction, e.g. 0.05 for 5%")
