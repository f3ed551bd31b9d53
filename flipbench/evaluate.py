"""Evaluation stage: one side (baseline or compressed) through lm-eval, flattened to a per-sample frame.

lm-eval does the prompting, scoring and filtering; this module only reads its logged samples into the
columns of :data:`flipbench.schema.SIDE_COLUMNS`.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from flipbench import scoring
from flipbench.config import ConfigError
from flipbench.tasks import TaskPlan

log = logging.getLogger(__name__)


def build_lm(model, tokenizer, batch_size: int):
    """Wrap an in-memory model for lm-eval. Device and dtype come from the model itself: HFLM leaves a
    pre-built model where it is (also one placed over several devices by accelerate) and sends the inputs to
    ``model.device``, the first parameter's device."""
    from flipbench.models import input_device
    from flipbench.reuse import memo_lm_class

    # lm-eval's HFLM, remembering its (context, continuation) encodings per tokenizer for the next side
    lm = memo_lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    if lm.device != input_device(model):  # first parameter offloaded (meta): inputs go to accelerate's main device
        lm._device = input_device(model)
    return lm


def load_tasks(plan: TaskPlan) -> dict:
    """Build lm-eval Task objects once; both sides (and calibration) reuse them."""
    return plan.manager.load(plan.specs)["tasks"]


def _per_task(setting: dict, leaf: str, plan: TaskPlan):
    return setting.get(leaf, setting.get(plan.reported.get(leaf, ""), None))


def configure(tasks: dict, plan: TaskPlan, num_fewshot: dict[str, int], max_gen_toks: dict[str, int] | None = None):
    """Per-task few-shot counts and generation budgets (``suite.num_fewshot``, ``suite.max_gen_toks``), set on the
    Task objects so that lm-eval builds its requests with them and the baseline cache key sees them."""
    for leaf, task in tasks.items():
        shots = _per_task(num_fewshot, leaf, plan)
        if shots is not None:
            task.set_config(key="num_fewshot", value=shots)
        budget = _per_task(max_gen_toks or {}, leaf, plan)
        if budget is not None:
            task.set_config(key="generation_kwargs", value={**(task.config.generation_kwargs or {}), "max_gen_toks": budget})


def doc_limits(tasks: dict, plan: TaskPlan, limit: int | None, task_limits: dict[str, int] | None = None) -> dict:
    """Leaf -> how many of its first docs are evaluated (None: all): suite.task_limits by reported task, else limit."""
    task_limits = task_limits or {}
    return {leaf: task_limits.get(plan.reported.get(leaf, leaf), task_limits.get(leaf, limit)) for leaf in tasks}


def lm_eval_docs(tasks: dict, plan: TaskPlan, limit: int | None, task_limits: dict[str, int] | None):
    """(limit, samples) for ``simple_evaluate``: per-task limits become its ``samples`` (the first N doc ids of each
    leaf), else the one ``limit`` applies to every leaf."""
    if not task_limits:
        return limit, None
    counts = doc_limits(tasks, plan, limit, task_limits)
    return None, {leaf: list(range(min(counts[leaf] or len(task.eval_docs), len(task.eval_docs))))
                  for leaf, task in tasks.items()}


def chat_settings(suite, tokenizer, model: str) -> dict:
    """lm-eval's chat arguments for ``simple_evaluate`` from ``suite.chat_template`` / ``system_prompt`` /
    ``fewshot_as_multiturn``: the same for both sides. ``true`` without a template in the tokenizer is refused."""
    has = bool(getattr(tokenizer, "chat_template", None))
    mode = str(suite.chat_template).lower()
    if mode == "true" and not has:
        raise ConfigError(f"suite.chat_template=true, but the tokenizer of {model} has no chat template; use "
                          "suite.chat_template=false (plain prompts) or a model that ships one")
    apply = mode == "true" or (mode == "auto" and has)
    return {"apply_chat_template": apply, "system_instruction": suite.system_prompt if apply else None,
            "fewshot_as_multiturn": bool(suite.fewshot_as_multiturn) if apply else True}


class TokenizerChat:
    """The chat-template call lm-eval's HFLM makes (``apply_chat_template``), for rendering requests without a model
    (the context-length pre-check)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def __repr__(self) -> str:
        return f"TokenizerChat({self.tokenizer.name_or_path})"


def build_requests(task, leaf: str, limit: int | None, samples: dict | None, seed: int, chat: dict | None = None,
                   tokenizer=None) -> None:
    """Build one task's requests as ``simple_evaluate`` will for flipbench's settings (few-shot seed set first, the
    same arguments to ``build_all_requests``; ``chat``: :func:`chat_settings`), so that under
    :func:`flipbench.reuse.requests_once` the evaluation can reuse them instead of rendering them again."""
    from lm_eval.evaluator_utils import get_sample_size

    chat = chat or {}
    apply = bool(chat.get("apply_chat_template"))
    task.set_fewshot_seed(seed=seed)
    task.build_all_requests(limit=get_sample_size(task, limit), samples=(samples or {}).get(leaf) if samples is not None
                            else None, rank=0, world_size=1, cache_requests=False, rewrite_requests_cache=False,
                            system_instruction=chat.get("system_instruction"), apply_chat_template=apply,
                            fewshot_as_multiturn=chat.get("fewshot_as_multiturn", True),
                            chat_template=TokenizerChat(tokenizer) if apply else None,
                            tokenizer_name=tokenizer.name_or_path.replace("/", "__") if apply else "")


def run_lm_eval(lm, tasks: dict, plan: TaskPlan, *, limit: int | None, num_fewshot: dict[str, int], seed: int,
                task_limits: dict[str, int] | None = None, shard_ids: dict[str, list[int]] | None = None,
                chat: dict | None = None) -> dict:
    """``simple_evaluate`` with per-sample logging. Few-shot counts are set per task on the Task objects;
    per-task limits become lm-eval's ``samples`` (see :func:`lm_eval_docs`). ``shard_ids`` (leaf -> doc ids,
    :func:`flipbench.shards.assign`) evaluates only those docs, with the prompts the whole run would give them."""
    import lm_eval

    from flipbench import shards
    from flipbench.reuse import requests_once

    configure(tasks, plan, num_fewshot)
    limit, samples = lm_eval_docs(tasks, plan, limit, task_limits)
    run_limit, run_samples, run_tasks = limit, samples, tasks
    if shard_ids is not None:
        run_limit, run_samples = None, shards.lm_eval_samples(shard_ids)
        run_tasks = {leaf: task for leaf, task in tasks.items() if leaf in shard_ids}
        if not run_tasks:
            return {"samples": {}}
    # Passing our TaskManager spares simple_evaluate from indexing every lm-eval task again (seconds per side);
    # requests_once spares it from rendering the same requests again for every side.
    with requests_once(tasks, seed), shards.only(run_tasks, shard_ids, limit, samples):
        return lm_eval.simple_evaluate(
            lm, tasks=list(run_tasks.values()), task_manager=plan.manager, limit=run_limit, samples=run_samples,
            log_samples=True, **(chat or {}),
            bootstrap_iters=0,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )


def headline_metric(task: str, sample: dict, metrics_cfg: dict[str, list[str]]) -> str:
    """The configured first metric, else acc_norm where lm-eval scored it (HellaSwag, ARC), else acc / exact_match.

    A configured metric must be one lm-eval logged for the sample (a multiple-choice one may also be a decision
    rule flipbench recomputes from the log-likelihoods, :data:`flipbench.scoring.RULES`); anything else is a
    :class:`flipbench.scoring.MetricError` naming the metrics the task has, never a silent 0."""
    available = list(sample.get("metrics", []))
    configured = metrics_cfg.get(task)
    if configured:
        metric = configured[0]
        multiple_choice = bool(sample.get("filtered_resps")) and isinstance(sample["filtered_resps"][0], (list, tuple))
        if metric not in available and not (multiple_choice and metric in scoring.RULES and metric != "acc_mutual_info"):
            raise scoring.MetricError(f"suite.metrics.{task}: {metric!r} is not a metric of {task}; it has "
                                      f"{', '.join(available) or 'none logged'}")
        return metric
    for name in ("acc_norm", "acc", "exact_match"):
        if name in available:
            return name
    if not available:
        raise scoring.MetricError(f"task {task}: lm-eval logged no per-sample metric; name one in suite.metrics.{task}")
    return available[0]


def _gold(sample: dict, task_obj, choices: list[str]) -> list[int]:
    """Gold choice indices as lm-eval's process_results finds them: doc_to_text for a multiple-input task,
    else doc_to_target (an index, a choice string, or a list of indices when there are several gold
    answers); indices outside the choices are dropped (lm-eval marks them -100, never equal to a pred)."""
    gold = task_obj.doc_to_text(sample["doc"]) if getattr(task_obj, "multiple_input", 0) else sample["target"]
    out = []
    for g in gold if isinstance(gold, list) else [gold]:
        index = (choices.index(g) if g in choices else -1) if isinstance(g, str) else int(g)
        if 0 <= index < len(choices):
            out.append(index)
    return out


def _mc_row(sample: dict, task_obj, metric: str, rule: tuple[str, float] | None = None) -> dict:
    choices = [str(c) for c in task_obj.doc_to_choice(sample["doc"])]
    k = len(choices)
    ll = np.array([float(r[0]) for r in sample["filtered_resps"]], dtype=np.float64)
    logged = scoring.logged_metrics(sample)
    # acc_mutual_info: lm-eval appends one unconditional request ("", choice) per choice after the K conditional ones
    ll, ll_uncond = (ll[:k], ll[k:]) if ll.size == 2 * k and "acc_mutual_info" in logged else (ll, ll[:0])
    lengths = np.array([float(len(c)) for c in choices])
    utf8 = np.array([float(len(c.encode("utf-8"))) for c in choices])
    scores = scoring.normalised_scores(metric, ll[None], lengths[None], utf8[None],
                                       ll_uncond[None] if ll_uncond.size else None)
    pred = int(np.argmax(scores[0]))
    gold = _gold(sample, task_obj, choices)
    if metric not in logged and metric not in scoring.RULES:
        raise scoring.MetricError(f"metric {metric!r} is missing from lm-eval's logged sample; it logged "
                                  f"{', '.join(logged) or 'none'}")
    correct = logged.get(metric, float(pred in gold))  # lm-eval's own value; the rule only where it logged none
    return dict(
        prompt=sample["arguments"][0][0], target=scoring.format_gold(gold), choices=choices,
        choice_len=lengths.astype(int).tolist(), ll=ll.tolist(), ll_uncond=ll_uncond.tolist(), pred=str(pred),
        correct=scoring.binary_correct(correct, metric, rule), lm_correct=json.dumps(logged, sort_keys=True), response="",
    )


def _gen_row(sample: dict, metric: str, rule: tuple[str, float] | None = None) -> dict:
    if metric not in sample:
        raise scoring.MetricError(f"metric {metric!r} is missing from lm-eval's logged sample (doc {sample.get('doc_id')}); "
                                  f"it logged {', '.join(sample.get('metrics', [])) or 'none'}")
    filtered = sample["filtered_resps"]
    pred = filtered[0] if isinstance(filtered, list) else filtered
    raw = sample["resps"][0][0] if sample["resps"] and sample["resps"][0] else ""
    return dict(
        prompt=sample["arguments"][0][0], target=str(sample["target"]), choices=[], choice_len=[], ll=[], ll_uncond=[],
        pred=str(pred), correct=scoring.binary_correct(sample[metric], metric, rule),
        lm_correct=json.dumps(scoring.logged_metrics(sample), sort_keys=True), response=str(raw),
    )


def samples_frame(results: dict, tasks: dict, plan: TaskPlan, metrics_cfg: dict[str, list[str]], subject_field: str,
                  correct_if: dict[str, str] | None = None) -> pd.DataFrame:
    """Flatten lm-eval's logged samples: one row per (task, group, doc_id, filter). ``correct_if``: task -> the rule
    that makes a continuous headline metric 0/1 (``suite.correct_if``)."""
    from flipbench.config import parse_correct_if

    rules = {task: parse_correct_if(rule, f"suite.correct_if.{task}") for task, rule in (correct_if or {}).items()}
    rows = []
    for leaf, samples in results["samples"].items():
        task_obj, task = tasks[leaf], plan.reported.get(leaf, leaf)
        output_type = task_obj.get_config("output_type")
        for sample in samples:
            metric = headline_metric(task, sample, metrics_cfg)
            rule = rules.get(task) if metric == (metrics_cfg.get(task) or [metric])[0] else None
            body = (_mc_row(sample, task_obj, metric, rule) if output_type == "multiple_choice"
                    else _gen_row(sample, metric, rule))
            group = leaf.removeprefix(f"{task}_") if task != leaf else str(sample["doc"].get(subject_field, leaf))
            rows.append(dict(
                task=task, group=group, category=plan.categories.get(leaf, ""), doc_id=int(sample["doc_id"]),
                filter=sample["filter"], output_type=output_type,
                metric=metric, doc_hash=sample["doc_hash"], prompt_hash=sample["prompt_hash"], **body, _leaf=leaf,
            ))
    if not rows:  # a shard that holds no doc of any task
        from flipbench.schema import SIDE_COLUMNS

        return pd.DataFrame(columns=list(SIDE_COLUMNS))
    frame = pd.DataFrame(rows)
    # Filters in the task YAML's order, so the first one listed (GSM8k's strict-match) is the headline.
    frame["_rank"] = [filter_rank(tasks, leaf_of, name) for leaf_of, name in zip(frame.pop("_leaf"), frame["filter"])]
    frame = frame.sort_values(["task", "group", "doc_id", "_rank"], kind="stable")
    return frame.drop(columns="_rank").reset_index(drop=True)


def filter_rank(tasks: dict, leaf: str, name: str) -> int:
    filters = [f.get("name") for f in (tasks[leaf].get_config("filter_list") or []) if isinstance(f, dict)]
    return filters.index(name) if name in filters else len(filters)
