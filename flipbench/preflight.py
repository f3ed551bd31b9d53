"""Checks that read files but no model weight: devices, output folder, model files, task YAML, context budgets.

Each check raises :class:`flipbench.config.ConfigError` with one line naming the problem and the fix. They run
before a run folder exists (``pipeline.preflight`` / ``pipeline.prepare``), and a sweep runs them for every
member before its first member starts (``flipbench.cli``).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from flipbench.config import ConfigError

SAFETENSORS_HEADER_MAX = 100 * 2**20  # the format's own limit on the JSON header


def check_device(requested: str) -> None:
    """``model.device`` parses as a torch device that exists here."""
    import torch

    if requested == "auto":
        return
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise ConfigError(f"model.device={requested!r} is not a device; use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(f"model.device={requested!r} but no CUDA device is visible; use model.device=cpu or auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"model.device={requested!r} but only {count} CUDA device(s) exist; use cuda:0..cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"model.device={requested!r} but MPS is not available; use model.device=cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ConfigError(f"model.device={requested!r} is not supported; use auto, cpu or cuda[:<index>]")


def check_output_folder(path: str, key: str = "output.root") -> None:
    """``path`` is a folder that can be written (or can be created inside a writable folder)."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{key}={path!r} is a file, not a folder; give a folder for the results")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={path!r} lies under {str(existing)!r}, which is a file; give a folder for the results")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path!r}: {str(existing)!r} is not writable; give a folder you can write to")


def check_config_json(folder: Path, what: str) -> None:
    """A local model's config.json parses: a broken one is the file's fault, not the hub's."""
    path = folder / "config.json"
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{what}: {path} is not valid JSON ({str(err).splitlines()[0]}); repair it or save the model "
                          "again with save_pretrained") from None


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is truncated or corrupt, read from its header alone; None when it is whole.

    Layout: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}}, then
    the data; every tensor's [begin, end) lies in the data, and the data ends where the file ends.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"is {size} bytes, too short for a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > min(SAFETENSORS_HEADER_MAX, size - 8):
            return f"declares a {n}-byte header but is {size} bytes (truncated or not safetensors)"
        try:
            header = json.loads(handle.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "has a header that is not JSON (corrupt or not safetensors)"
    if not isinstance(header, dict):
        return "has a header that is not a JSON object (corrupt)"
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets", ())) == 2]
    data = size - 8 - n
    if ends and max(ends) > data:
        return f"holds {data} bytes of tensor data but its header declares {max(ends)} (truncated)"
    return None


def check_weight_files(folder: Path, what: str) -> None:
    """Every .safetensors file in a local model folder is whole, judged from its header and its size."""
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            raise ConfigError(f"{what}: weight file {path} {problem}; download or save the model again")


def vocab_size(config, tokenizer=None) -> int | None:
    size = getattr(getattr(config, "text_config", None) or config, "vocab_size", None)
    return int(size) if size is not None else (len(tokenizer) if tokenizer is not None else None)


def check_same_vocabulary(base_config, comp_config, base_path: str, comp_path: str) -> None:
    """compression=checkpoint compares answers token by token only when both models share one vocabulary."""
    base, comp = vocab_size(base_config), vocab_size(comp_config)
    if base is not None and comp is not None and base != comp:
        raise ConfigError(f"compression.path={comp_path!r} has a vocabulary of {comp} tokens but the baseline "
                          f"{base_path!r} has {base}; compare a checkpoint made from the same baseline")


def check_tokenizers_agree(base_tok, comp_tok, comp_path: str) -> None:
    """Same vocabulary size is not enough: the same text must become the same token ids on both sides."""
    if base_tok.get_vocab() != comp_tok.get_vocab():
        raise ConfigError(f"compression.path={comp_path!r} has a tokenizer that differs from the baseline's; compare "
                          "a checkpoint made from the same baseline (with its tokenizer saved beside it)")


def check_task_yamls(folder: str | None) -> None:
    """Parse the user's task YAML first: lm-eval skips a file it cannot parse and then calls its task unknown."""
    if not folder:
        return
    import yaml
    from lm_eval.tasks._yaml_loader import load_yaml

    for path in sorted(Path(folder).expanduser().rglob("*.yaml")):
        try:
            load_yaml(path, resolve_func=False, recursive=False)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"task YAML {path}{where}: {problem}; fix its syntax") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise ConfigError(f"task YAML {path}: {str(err).splitlines()[0]}; fix the file") from None


def check_text_file(path: str, key: str = "calibration.path") -> None:
    """A calibration text file exists, is UTF-8 text and holds some text."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{key}={path!r} is not a file; give a UTF-8 text file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{key}={path!r} is not UTF-8 text (byte {err.start} cannot be decoded); give a plain "
                          "text file") from None
    if "\x00" in text:
        raise ConfigError(f"{key}={path!r} holds NUL bytes (a binary file?); give a plain text file")
    if not text.strip():
        raise ConfigError(f"{key}={path!r} is empty; give it some representative text")


def check_generation_budgets(budgets: dict, plan) -> None:
    """``suite.max_gen_toks.<task>`` names a generative task of the run (``plan``: a tasks.TaskPlan)."""
    kinds = {**{plan.reported[leaf]: kind for leaf, kind in plan.output_types.items()}, **plan.output_types}
    for task in budgets:
        if task not in kinds:
            raise ConfigError(f"suite.max_gen_toks.{task}: {task!r} is not a task of this run ({', '.join(sorted(kinds))})")
        if kinds[task] != "generate_until":
            raise ConfigError(f"suite.max_gen_toks.{task}: {task} is {kinds[task]}, not generative; remove the setting")


def check_quant_shapes(config, quant_cfg, trust_remote_code: bool) -> None:
    """The quantization settings against the model's layer shapes, on a weightless (meta-device) copy."""
    from flipbench import compress as compressors
    from flipbench.models import meta_model

    try:
        skeleton = meta_model(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001  an architecture transformers cannot build here fails, with its cause, at load
        return
    try:
        compressors.validate(skeleton, quant_cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None


# Metrics whose per-doc value is 0 or 1, so a doc is right or wrong as it stands; any other needs suite.correct_if.
BINARY_METRICS = ("acc", "acc_norm", "acc_bytes", "acc_mutual_info", "exact_match", "em")


def _task_metrics(task) -> dict[str, bool]:
    """metric -> higher is better, for the metrics lm-eval computes per sample for one Task object."""
    try:
        better = dict(task.higher_is_better() or {})
    except Exception:  # noqa: BLE001  a task without the method (a custom class): fall back on its metric list
        better = {}
    for entry in getattr(task.config, "metric_list", None) or []:
        name = entry.get("metric") if isinstance(entry, dict) else None
        if isinstance(name, str):
            better.setdefault(name, bool(entry.get("higher_is_better", True)))
    return better


def check_headline_metrics(task_objs: dict, reported: dict[str, str], metrics: dict[str, list[str]],
                           correct_if: dict[str, str]) -> None:
    """Each task's headline metric (``suite.metrics.<task>``, else the default lm-eval logs first) is one the task
    computes, and is 0/1 per doc or has a ``suite.correct_if.<task>`` rule whose direction matches the metric's
    (``>=`` for higher-is-better, ``<=`` for lower-is-better, from the task's ``higher_is_better``). Runs on the
    loaded Task objects (``evaluate.load_tasks``), before any model loads; one ConfigError line names the metrics
    the task has."""
    from flipbench.config import parse_correct_if
    from flipbench.scoring import RULES

    names = set(reported.values()) | set(reported)
    for key, setting in (("suite.metrics", metrics), ("suite.correct_if", correct_if)):
        for task in setting:
            if task not in names:
                raise ConfigError(f"{key}.{task}: {task!r} is not a task of this run ({', '.join(sorted(set(reported.values())))})")
    for leaf, task_obj in task_objs.items():
        task = reported.get(leaf, leaf)
        available = _task_metrics(task_obj)
        multiple_choice = task_obj.get_config("output_type") == "multiple_choice"
        recomputed = [m for m in RULES if m != "acc_mutual_info"] if multiple_choice else []
        configured = list(metrics.get(task) or metrics.get(leaf) or [])
        for metric in configured:
            if metric not in available and metric not in recomputed:
                raise ConfigError(f"suite.metrics.{task}: {metric!r} is not a metric of {task}; it has "
                                  f"{', '.join(available) or 'none'}")
        headline = configured[0] if configured else next(
            (m for m in ("acc_norm", "acc", "exact_match") if m in available), next(iter(available), None))
        if headline is None:
            raise ConfigError(f"task {task} computes no metric lm-eval logs per doc; give it a metric_list")
        rule = correct_if.get(task) or correct_if.get(leaf)
        if rule is None:
            if headline not in BINARY_METRICS:
                raise ConfigError(f"{task}'s headline metric {headline!r} is not 0/1 per doc; flips need a binary "
                                  f"correctness: add +suite.correct_if.{task}='{'>=' if available.get(headline, True) else '<='}X' "
                                  f"with a threshold X, or pick one of {', '.join(available)}")
            continue
        op, threshold = parse_correct_if(rule, f"suite.correct_if.{task}")
        higher = available.get(headline, True)
        if higher != op.startswith(">"):
            raise ConfigError(f"suite.correct_if.{task}={rule!r} counts {'low' if higher else 'high'} values of "
                              f"{headline} as correct, but {headline} is {'higher' if higher else 'lower'}-is-better; "
                              f"write '{'>=' if higher else '<='}{threshold:g}'")
