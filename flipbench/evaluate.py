"""Evaluation stage: one side (baseline or compressed) through lm-eval, flattened to a per-sample frame.

lm-eval does the prompting, scoring and filtering; this module only reads its logged samples into the
columns of :data:`flipbench.schema.SIDE_COLUMNS`.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from flipbench.tasks import TaskPlan

log = logging.getLogger(__name__)


def build_lm(model, tokenizer, batch_size: int):
    """Wrap an in-memory model for lm-eval. Device and dtype come from the model itself: HFLM leaves a
    pre-built model where it is (also one placed over several devices by accelerate) and sends the inputs to
    ``model.device``, the first parameter's device."""
    from lm_eval.models.huggingface import HFLM

    from flipbench.models import input_device

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    if lm.device != input_device(model):  # first parameter offloaded (meta): inputs go to accelerate's main device
        lm._device = input_device(model)
    return lm


def load_tasks(plan: TaskPlan) -> dict:
    """Build lm-eval Task objects once; both sides (and calibration) reuse them."""
    return plan.manager.load(plan.specs)["tasks"]


def run_lm_eval(lm, tasks: dict, plan: TaskPlan, *, limit: int | None, num_fewshot: dict[str, int], seed: int) -> dict:
    """``simple_evaluate`` with per-sample logging. Few-shot counts are set per task on the Task objects."""
    import lm_eval

    for leaf, task in tasks.items():
        shots = num_fewshot.get(leaf, num_fewshot.get(plan.reported.get(leaf, ""), None))
        if shots is not None:
            task.set_config(key="num_fewshot", value=shots)
    # Passing our TaskManager spares simple_evaluate from indexing every lm-eval task again (seconds per side).
    return lm_eval.simple_evaluate(
        lm, tasks=list(tasks.values()), task_manager=plan.manager, limit=limit, log_samples=True, bootstrap_iters=0,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )


def headline_metric(task: str, sample: dict, metrics_cfg: dict[str, list[str]]) -> str:
    """The configured first metric, else acc_norm where lm-eval scored it (HellaSwag, ARC), else acc / exact_match."""
    configured = metrics_cfg.get(task)
    if configured:
        return configured[0]
    available = sample.get("metrics", [])
    for name in ("acc_norm", "acc", "exact_match"):
        if name in available:
            return name
    return available[0] if available else "acc"


def _target_index(target, choices: list[str]) -> int:
    if isinstance(target, (list, tuple)):  # several gold answers: lm-eval counts any; keep the first
        target = target[0]
    if isinstance(target, str):
        return choices.index(target) if target in choices else -1
    return int(target)


def _mc_row(sample: dict, task_obj, metric: str) -> dict:
    doc = sample["doc"]
    choices = [str(c) for c in task_obj.doc_to_choice(doc)]
    ll = np.array([float(r[0]) for r in sample["filtered_resps"]], dtype=np.float64)
    lengths = np.array([float(len(c)) for c in choices])
    scores = ll / lengths if metric == "acc_norm" else ll
    pred = int(np.argmax(scores))
    target = _target_index(sample["target"], choices)
    correct = sample.get(metric)
    return dict(
        prompt=sample["arguments"][0][0], target=str(target), choices=choices, choice_len=lengths.astype(int).tolist(),
        ll=ll.tolist(), pred=str(pred), correct=int(correct if correct is not None else pred == target), response="",
    )


def _gen_row(sample: dict, metric: str) -> dict:
    filtered = sample["filtered_resps"]
    pred = filtered[0] if isinstance(filtered, list) else filtered
    raw = sample["resps"][0][0] if sample["resps"] and sample["resps"][0] else ""
    return dict(
        prompt=sample["arguments"][0][0], target=str(sample["target"]), choices=[], choice_len=[], ll=[],
        pred=str(pred), correct=int(float(sample.get(metric, 0.0)) > 0), response=str(raw),
    )


def samples_frame(results: dict, tasks: dict, plan: TaskPlan, metrics_cfg: dict[str, list[str]], subject_field: str) -> pd.DataFrame:
    """Flatten lm-eval's logged samples: one row per (task, group, doc_id, filter)."""
    rows = []
    for leaf, samples in results["samples"].items():
        task_obj, task = tasks[leaf], plan.reported.get(leaf, leaf)
        output_type = task_obj.get_config("output_type")
        for sample in samples:
            metric = headline_metric(task, sample, metrics_cfg)
            body = _mc_row(sample, task_obj, metric) if output_type == "multiple_choice" else _gen_row(sample, metric)
            group = leaf.removeprefix(f"{task}_") if task != leaf else str(sample["doc"].get(subject_field, leaf))
            rows.append(dict(
                task=task, group=group, doc_id=int(sample["doc_id"]), filter=sample["filter"], output_type=output_type,
                metric=metric, doc_hash=sample["doc_hash"], prompt_hash=sample["prompt_hash"], **body, _leaf=leaf,
            ))
    frame = pd.DataFrame(rows)
    # Filters in the task YAML's order, so the first one listed (GSM8k's strict-match) is the headline.
    frame["_rank"] = [filter_rank(tasks, leaf_of, name) for leaf_of, name in zip(frame.pop("_leaf"), frame["filter"])]
    frame = frame.sort_values(["task", "group", "doc_id", "_rank"], kind="stable")
    return frame.drop(columns="_rank").reset_index(drop=True)


def filter_rank(tasks: dict, leaf: str, name: str) -> int:
    filters = [f.get("name") for f in (tasks[leaf].get_config("filter_list") or []) if isinstance(f, dict)]
    return filters.index(name) if name in filters else len(filters)
