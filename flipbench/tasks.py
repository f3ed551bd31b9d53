"""Resolve the suite's task names into lm-eval task specs, before any model loads.

Bundled tasks (``tasks/``) and a user's include path are indexed by lm-eval's own TaskManager; groups are
expanded to their leaf tasks here so each leaf can be patched (relative data files, air-gapped data files)
and so MMLU-like groups can be reported as one task with per-subject groups.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path

from flipbench.config import ConfigError, SuiteConfig

BUNDLED_TASKS = Path(__file__).resolve().parent.parent / "tasks"


@dataclass
class TaskPlan:
    """What to hand to lm-eval, and how leaf tasks map onto the reported task names."""

    manager: object  # lm_eval.tasks.TaskManager
    specs: list = field(default_factory=list)  # leaf names, or full config dicts where patched
    reported: dict[str, str] = field(default_factory=dict)  # leaf task -> task name in the report
    output_types: dict[str, str] = field(default_factory=dict)  # leaf task -> lm-eval output_type
    notes: list[str] = field(default_factory=list)  # deviations from the standard protocol (one-file data)
    categories: dict[str, str] = field(default_factory=dict)  # leaf task -> category group (MMLU's stem, ...)

    @property
    def leaves(self) -> list[str]:
        return list(self.reported)


def include_paths(suite: SuiteConfig) -> list[str]:
    paths = [str(BUNDLED_TASKS)]
    if suite.include_path:
        user = Path(suite.include_path).expanduser()
        if not user.is_dir():
            raise ConfigError(f"suite.include_path={suite.include_path!r} is not a directory of lm-eval task YAML files")
        paths.append(str(user.resolve()))
    return paths


# lm-eval's folders that hold the standard suite's tasks and the common zero-shot benchmarks (Winogrande, PIQA,
# BoolQ, COPA, OpenBookQA, SciQ, Social IQa, CommonsenseQA, TruthfulQA, LAMBADA): indexing them takes 0.06 s,
# lm-eval's whole registry (thousands of YAML files) 15 s on a small machine.
STANDARD_FOLDERS = ("mmlu/default", "hellaswag", "arc", "gsm8k", "winogrande", "piqa", "openbookqa", "sciq", "siqa",
                    "commonsense_qa", "super_glue", "truthfulqa", "lambada")


def task_manager(names: list[str], paths: list[str]):
    """Index the bundled and user tasks, then the standard tasks' folders; fall back to lm-eval's full registry
    only when a name needs it."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    standard = [str(Path(lm_eval.tasks.__file__).parent / folder) for folder in STANDARD_FOLDERS]
    for extra in ([], standard):
        manager = TaskManager(include_path=paths + extra, include_defaults=False)
        if all(name in manager.task_index for name in names):
            return manager
    return TaskManager(include_path=paths)


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else "; list tasks with: lm-eval ls tasks"


def _leaves(name: str, index: dict, category: str | None = None) -> list[tuple[str, str]]:
    """(leaf task, category) pairs under ``name``. The category is the alias (else name) of the group one level
    below ``name`` that holds the leaf, as lm-eval reports it (MMLU: stem, other, social sciences, humanities);
    '' for a leaf directly under ``name``."""
    entry = index[name]
    kind = entry.kind.name
    if kind == "TAG":
        return sorted((n, category or "") for n, e in index.items() if name in e.tags and e.kind.name in ("TASK", "PY_TASK"))
    if kind != "GROUP":
        return [(name, category or "")]
    cfg = entry.cfg or {}
    children = cfg.get("task", [])
    below = "" if category is None else category or str(cfg.get("group_alias") or name)
    out: list[tuple[str, str]] = []
    for child in children if isinstance(children, list) else [children]:
        child_name = child if isinstance(child, str) else child.get("task") or child.get("group")
        if child_name in index:
            out.extend(_leaves(child_name, index, below))
    return out


def _full_config(entry) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return copy.deepcopy(load_yaml(entry.yaml_path, resolve_func=True)) if entry.yaml_path else copy.deepcopy(entry.cfg)


def _relative_data_files(cfg: dict, yaml_dir: Path) -> dict | None:
    """Data files named relative to a task's YAML resolve against that YAML's folder, wherever we run from."""
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if not isinstance(files, dict) or all(Path(str(p)).is_absolute() for p in files.values()):
        return None
    resolved = {split: str((yaml_dir / str(p)).resolve()) for split, p in files.items()}
    missing = [p for p in resolved.values() if not Path(p).exists()]
    if missing:
        raise ConfigError(f"task {cfg.get('task')!r}: data file {missing[0]} is missing; regenerate it or fix data_files")
    return resolved


def resolve(suite: SuiteConfig) -> TaskPlan:
    """Expand, check and patch the suite's tasks. Unknown names fail with the closest known names."""
    paths = include_paths(suite)
    manager = task_manager(suite.tasks, paths)
    index = manager.task_index
    plan = TaskPlan(manager=manager)
    for name in suite.tasks:
        if name not in index:
            raise ConfigError(f"unknown task {name!r}{_suggest(name, list(index))}")
        before = len(plan.reported)
        for leaf, category in _leaves(name, index):
            reported = name if name in suite.subject_groups else leaf
            spec, note = _leaf_spec(leaf, index[leaf], suite, reported)
            if note and note not in plan.notes:
                plan.notes.append(note)
            if spec is None:  # a local file without rows for this subject
                continue
            plan.reported[leaf] = reported
            if reported != leaf and category:
                plan.categories[leaf] = category
            plan.specs.append(spec)
            cfg = spec if isinstance(spec, dict) else (index[leaf].cfg or {})
            plan.output_types[leaf] = cfg.get("output_type", "multiple_choice")
        if len(plan.reported) == before:
            raise ConfigError(f"task {name!r} has no documents to evaluate; check suite.data_files.{name}")
    unknown = sorted(set(suite.data_files) - set(plan.reported) - set(plan.reported.values()))
    if unknown:
        raise ConfigError(f"suite.data_files names {unknown[0]!r}, which is not among the evaluated tasks {sorted(set(plan.reported.values()))}")
    return plan


def _leaf_spec(leaf: str, entry, suite: SuiteConfig, reported: str):
    """(spec, note): the leaf's name, or its patched full config; note: a deviation from the standard protocol."""
    local_data = suite.data_files.get(leaf) or suite.data_files.get(reported)
    relative = entry.yaml_path and (entry.cfg or {}).get("dataset_kwargs")
    if not local_data and not relative:
        return leaf, None
    cfg = _full_config(entry)
    if local_data:
        from flipbench.datafiles import apply_local_data

        shots = suite.num_fewshot.get(leaf, suite.num_fewshot.get(reported, cfg.get("num_fewshot") or 0))
        return apply_local_data(cfg, local_data, reported, int(shots or 0))
    files = _relative_data_files(cfg, Path(entry.yaml_path).parent)
    if files:
        cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": files}
    return cfg, None
