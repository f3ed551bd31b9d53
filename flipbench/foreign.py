"""Sides flipbench did not collect: lm-eval ``--log_samples`` output, or per-item prediction files.

:func:`load_foreign` reads one side, detected from the content of the paths given for it, into the same
:class:`flipbench.artifact.Side` that ``flipbench collect`` writes, so pairing, metrics, reports and the gate run
unchanged:

- an lm-eval ``--output_path`` folder (``results_<date>.json`` + ``samples_<task>_<date>.jsonl``, directly or one
  model-named folder below) or one ``samples_*.jsonl``: rows exactly as :func:`flipbench.evaluate.samples_frame`
  builds them from ``simple_evaluate``'s samples (the log holds the same dict per sample, its responses as text);
  the task configs (n-shot, version, prompt settings) and the lm-eval version come from the results JSON;
- a per-item file (:mod:`flipbench.itemfile`).

Returns None where every path is a flipbench artifact (or a folder of shard artifacts), so the caller reads those.
Every refusal is a one-line :class:`flipbench.config.ConfigError`.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd

from flipbench import artifact, evaluate, itemfile
from flipbench.config import ConfigError, SuiteConfig
from flipbench.tasks import TaskPlan

LM_EVAL, ITEMS = "lm-eval log", itemfile.ITEMS
SAMPLES_NAME = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9.\-]+)\.jsonl$")
# Task config fields that shape what the model saw or how lm-eval scored it; both sides must agree on them.
TASK_FIELDS = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "target_delimiter",
               "fewshot_delimiter", "description", "gen_prefix", "generation_kwargs", "filter_list", "metric_list")
ACCEPTED = ("give a flipbench artifact folder, an lm-eval --output_path folder or samples_<task>_<date>.jsonl, "
            "or a per-item .jsonl/.csv file (doc_id, pred, gold)")


def detect(path: Path) -> str:
    """'artifact', LM_EVAL, ITEMS or itemfile.GOLD (an items file: gold answers without predictions)."""
    if not path.exists():
        raise ConfigError(f"{path} does not exist; {ACCEPTED}")
    if path.is_dir():
        if artifact.is_artifact(path) or any(artifact.is_artifact(p) for p in path.iterdir() if p.is_dir()):
            return "artifact"
        if _lm_eval_files(path):
            return LM_EVAL
        raise ConfigError(f"{path} holds neither a flipbench artifact nor lm-eval output; {ACCEPTED}")
    first = itemfile.first_record(path)
    if first is None:
        raise ConfigError(f"{path} is empty; {ACCEPTED}")
    if "filtered_resps" in first and "doc_id" in first:
        return LM_EVAL
    return itemfile.kind(path, first)


def load_foreign(paths: list[str | Path], what: str) -> artifact.Side | None:
    """One side from lm-eval output or per-item files; None when the paths are flipbench artifacts."""
    files = [Path(p) for p in paths]
    kinds = [detect(p) for p in files]
    if all(k == "artifact" for k in kinds):
        return None
    forms = sorted(set(k for k in kinds if k != itemfile.GOLD))
    if len(forms) != 1:
        names = " and ".join(forms) if forms else "only gold answers"
        raise ConfigError(f"{what}: the paths mix formats ({names}); give one form per side")
    if forms[0] == LM_EVAL:
        if itemfile.GOLD in kinds:
            raise ConfigError(f"{what}: an items file of gold answers goes with per-item files; lm-eval logs carry "
                              "their own targets")
        return _lm_eval_side(files, what)
    if forms[0] == "artifact":
        raise ConfigError(f"{what}: a flipbench artifact cannot be joined with gold answers; give the artifact alone")
    gold = [f for f, k in zip(files, kinds) if k == itemfile.GOLD]
    preds = [f for f, k in zip(files, kinds) if k == ITEMS]
    frame, notes = itemfile.read_side(preds, gold, what)
    return _side(preds + gold, frame, ITEMS, tasks={t: {"source": ITEMS} for t in sorted(set(frame["task"]))},
                 lm_eval=None, name=preds[0].stem, notes=notes)


# ---------------------------------------------------------------- lm-eval output


def _lm_eval_files(folder: Path) -> list[Path]:
    """samples_*.jsonl and results_*.json in the folder or one folder below (lm-eval's model-named folder)."""
    found = []
    for where in [folder] + sorted(p for p in folder.iterdir() if p.is_dir()):
        found += sorted(p for p in where.iterdir() if p.is_file() and (SAMPLES_NAME.match(p.name) or
                                                                       re.match(r"^results_.+\.json$", p.name)))
    return found


def _run_files(files: list[Path], what: str) -> tuple[dict[str, Path], dict]:
    """({leaf task: samples file}, results JSON or {}) of one lm-eval run; folders expand to their files."""
    expanded = []
    for f in files:
        expanded += _lm_eval_files(f) if f.is_dir() else [f]
    samples = [f for f in expanded if SAMPLES_NAME.match(f.name)]
    if not samples:
        raise ConfigError(f"{what}: {files[0]} holds no samples_<task>_<date>.jsonl; run lm_eval with --log_samples")
    dates = sorted({SAMPLES_NAME.match(f.name)["date"] for f in samples})
    if len(dates) > 1:
        raise ConfigError(f"{what}: the lm-eval output holds {len(dates)} runs ({', '.join(dates)}); give one run's "
                          "samples files or a folder per run")
    by_task: dict[str, Path] = {}
    for f in samples:
        task = SAMPLES_NAME.match(f.name)["task"]
        if task in by_task:
            raise ConfigError(f"{what}: task {task} is given twice ({by_task[task]} and {f}); keep one")
        by_task[task] = f
    # results_<date>.json, or <name>_<date>.json where --output_path named a .json file; beside the samples if
    # they were given alone
    results = sorted({p for f in samples for p in f.parent.glob(f"*_{dates[0]}.json")})
    try:
        config = json.loads(results[0].read_text()) if results else {}
    except ValueError as err:
        raise ConfigError(f"{what}: {results[0]} is not valid JSON ({err})") from None
    return by_task, config


def _read_jsonl(path: Path, what: str) -> list[dict]:
    try:
        return itemfile.read_jsonl(path, "; give lm-eval's samples file unchanged", ACCEPTED)
    except ConfigError as err:
        raise ConfigError(f"{what}: {err}") from None


def _delimiter(config: dict, results: dict) -> str:
    """What lm-eval put between the context and each choice: target_delimiter, '' under a chat template (unless a
    gen_prefix that does not end in whitespace is set), as ConfigurableTask.construct_requests does."""
    delimiter = config.get("target_delimiter", " ")
    if results.get("chat_template") or results.get("chat_template_sha"):
        prefix = config.get("gen_prefix")
        return delimiter if prefix and not prefix[-1:].isspace() else ""
    return delimiter


def _target(text: str):
    """lm-eval logs ``str(doc_to_target(doc))``: an index ("2"), indices ("[0, 3]") or a choice's text."""
    if text.isdigit():
        return int(text)
    if text.startswith("[") and text.endswith("]"):
        try:
            return list(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            return text
    return text


class _LoggedTask:
    """The part of an lm-eval Task that evaluate.samples_frame reads, rebuilt from a log: its config from the
    results JSON, each doc's choices from the continuations it logged."""

    multiple_input = 0

    def __init__(self, config: dict):
        self.config = config
        self.choices: dict[int, list[str]] = {}  # id(sample["doc"]) -> choices

    def get_config(self, key):
        return self.config.get(key)

    def doc_to_choice(self, doc):
        return self.choices[id(doc)]


def _restore(sample: dict, task: _LoggedTask, leaf: str, delimiter: str, what: str) -> dict:
    """A logged sample back in simple_evaluate's shape: arguments as (context, continuation) tuples, the target
    parsed; a multiple-choice doc's choices are its continuations without the delimiter."""
    args = sample.get("arguments")
    if isinstance(args, dict):
        args = [tuple(args[f"gen_args_{i}"][f"arg_{j}"] for j in range(len(args[f"gen_args_{i}"])))
                for i in range(len(args))]
    restored = {**sample, "arguments": args}
    if task.get_config("output_type") != "multiple_choice":
        return restored
    conts = [a[1] for a in args]
    # acc_mutual_info: K conditional requests, then K unconditional ones ("", choice)
    k = len(args) // 2 if "acc_mutual_info" in sample.get("metrics", []) else len(args)
    if len({a[0] for a in args[:k]}) > 1:
        raise ConfigError(f"{what}: {leaf} is a multiple-input task (one context per choice, e.g. Winogrande); "
                          "flipbench reads those only from its own runs")
    task.choices[id(sample["doc"])] = [c[len(delimiter):] if c.startswith(delimiter) else c for c in conts[:k]]
    restored["target"] = _target(str(sample.get("target", "")))
    return restored


def _output_type(samples: list[dict]) -> str:
    """Without a results JSON: generate_until when the request carried generation kwargs, else multiple_choice."""
    args = samples[0].get("arguments") or {}
    first = args.get("gen_args_0", {}) if isinstance(args, dict) else {}
    return "generate_until" if isinstance(first.get("arg_1"), dict) else "multiple_choice"


def _groups(results: dict) -> tuple[dict[str, str], dict[str, str]]:
    """(leaf -> reported task, leaf -> category) from group_subtasks: a leaf under a subject group (MMLU) is
    reported as that group, its category the alias of the group between them (stem, humanities, ...)."""
    parents = {child: group for group, children in (results.get("group_subtasks") or {}).items() for child in children}
    reported, categories = {}, {}
    for leaf in (results.get("configs") or {}):
        chain, node = [leaf], leaf
        while node in parents and parents[node] not in chain:
            node = parents[node]
            chain.append(node)
        top = next((g for g in reversed(chain) if g in SuiteConfig().subject_groups), None)
        if top is None:
            continue
        reported[leaf] = top
        below = chain[chain.index(top) - 1] if chain.index(top) > 1 else ""
        alias = ((results.get("groups") or {}).get(below) or (results.get("results") or {}).get(below) or {}).get("alias")
        if below:
            categories[leaf] = re.sub(r"^[\s\-]*", "", str(alias or below))
    return reported, categories


def _lm_eval_side(files: list[Path], what: str) -> artifact.Side:
    by_task, results = _run_files(files, what)
    configs = results.get("configs") or {}
    reported, categories = _groups(results)
    plan = TaskPlan(manager=None, reported={leaf: reported.get(leaf, leaf) for leaf in by_task}, categories=categories)
    tasks, logged = {}, {}
    for leaf, path in by_task.items():
        samples = _read_jsonl(path, what)
        config = dict(configs.get(leaf) or {"output_type": _output_type(samples)})
        if config.get("output_type") not in ("multiple_choice", "generate_until"):
            raise ConfigError(f"{what}: {leaf} is a {config.get('output_type')} task; flipbench compares "
                              "multiple-choice and generative tasks")
        tasks[leaf] = _LoggedTask(config)
        delimiter = _delimiter(config, results)
        logged[leaf] = [_restore(s, tasks[leaf], leaf, delimiter, what) for s in samples]
    frame = evaluate.samples_frame({"samples": logged}, tasks, plan, {}, SuiteConfig().subject_field)
    task_facts = {leaf: {"num_fewshot": (results.get("n-shot") or {}).get(leaf),
                         "version": (results.get("versions") or {}).get(leaf),
                         **{k: configs.get(leaf, {}).get(k) for k in TASK_FIELDS}} for leaf in by_task}
    notes = [] if results else [f"{what}: no results JSON beside the samples; task configs were not compared"]
    notes += [f"{task}: token KL is not available from lm-eval logs (they hold the answers, not per-token "
              "distributions); flips, answers and intervals are" for task in
              sorted(set(frame.loc[frame["output_type"] == "generate_until", "task"]))]
    model = results.get("model_name") or (results.get("config") or {}).get("model") or files[0].stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(model).rstrip("/").split("/")[-1])[-40:] or "lm-eval"
    return _side(files, frame, LM_EVAL, tasks=task_facts, lm_eval=results.get("lm_eval_version"), name=name,
                 notes=notes, nshot={plan.reported[leaf]: n for leaf, f in task_facts.items()
                                     if (n := f["num_fewshot"]) is not None})


# ---------------------------------------------------------------- the side and its checks


def _headline_metrics(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Per task the metrics flipbench reports: the headline first (acc_norm, else acc, else exact_match, as
    evaluate.headline_metric picks it), then acc where acc_norm leads and lm-eval logged both."""
    out = {}
    for task, rows in frame.groupby("task", sort=False):
        headline = rows["metric"].iloc[0]
        logged = set().union(*(json.loads(c).keys() for c in rows["lm_correct"]))
        out[task] = [headline] + (["acc"] if headline == "acc_norm" and "acc" in logged else [])
    return out


def _side(files: list[Path], frame: pd.DataFrame, form: str, *, tasks: dict, lm_eval, name: str, notes: list[str],
          nshot: dict | None = None) -> artifact.Side:
    metrics = _headline_metrics(frame)
    docs = {str(leaf): int(n) for leaf, n in frame.drop_duplicates(["task", "group", "doc_id"])
            .groupby("task").size().items()}
    suite = {"tasks": sorted(metrics), "metrics": metrics, "num_fewshot": nshot or {}}
    manifest = {
        "foreign": form, "model": name, "tasks": tasks, "lm_eval": lm_eval, "tokenizer": None, "suite": suite,
        "docs": docs, "compression": {"method": name, "source": form}, "data_notes": notes,
        "token_kl_note": f"not available: a {form} holds answers, not the per-token distributions token KL needs",
        "config": {"model": {"name": name, "path": str(files[0])}, "compression": {"method": "none"},
                   "suite": {"name": form, **suite}},
    }
    return artifact.Side(files, manifest, frame, None, None)


def check_compatible(base: artifact.Side, comp: artifact.Side) -> None:
    """Refuse (ConfigError, one line) two sides of which one at least was not collected by flipbench, when they are
    not of one form, were scored with different metrics or hold different docs. Called first by
    artifact.check_compatible, which then compares the task configs and lm-eval versions; a no-op for artifacts."""
    if not (base.manifest.get("foreign") or comp.manifest.get("foreign")):
        return
    forms = [s.manifest.get("foreign") or "flipbench artifact" for s in (base, comp)]
    if forms[0] != forms[1]:
        raise ConfigError(f"the baseline was given as {forms[0]} and the compressed side as {forms[1]}; give both "
                          "sides in one form")
    for task in sorted(set(base.samples["task"]) & set(comp.samples["task"])):
        kinds = [set(s.samples.loc[s.samples["task"] == task, "output_type"]) for s in (base, comp)]
        if kinds[0] != kinds[1]:
            side = "baseline" if "multiple_choice" in kinds[0] else "compressed side"
            what = "choice probabilities (probs) are" if forms[0] == ITEMS else "multiple-choice rows are"
            raise ConfigError(f"{task}: {what} given on the {side} only; give both sides in the same shape")
        logged = [_logged(s.samples, task) for s in (base, comp)]
        if logged[0] != logged[1]:
            side, names = (("baseline", logged[0] - logged[1]) if logged[0] - logged[1]
                           else ("compressed side", logged[1] - logged[0]))
            raise ConfigError(f"{task}: {', '.join(sorted(names))} is logged on the {side} only; score both sides "
                              "with the same metrics")
    keys = [set(map(tuple, s.samples[["task", "group", "doc_id"]].astype(str).to_numpy())) for s in (base, comp)]
    if keys[0] != keys[1]:
        only, side = (keys[0] - keys[1], "baseline") if keys[0] - keys[1] else (keys[1] - keys[0], "compressed side")
        task, group, doc = sorted(only)[0]
        where = task if group == task else f"{task} ({group})"
        raise ConfigError(f"the two sides hold different docs: {where} doc {doc} is on the {side} only "
                          f"({len(keys[0] ^ keys[1])} docs differ); give files of the same docs")
    if forms[0] == ITEMS:
        key = ["task", "group", "doc_id"]
        both = base.samples[key + ["target", "choices"]].merge(comp.samples[key + ["target", "choices"]], on=key)
        gold = [(c[int(t)] if c is not None and len(c) else t) for t, c in zip(both["target_x"], both["choices_x"])]
        other = [(c[int(t)] if c is not None and len(c) else t) for t, c in zip(both["target_y"], both["choices_y"])]
        bad = [i for i, (a, b) in enumerate(zip(gold, other)) if a != b]
        if bad:
            row = both.iloc[bad[0]]
            raise ConfigError(f"{row['task']} doc {row['doc_id']}: the two sides give different gold answers "
                              f"({gold[bad[0]]!r} vs {other[bad[0]]!r}); give both the same items file")


def _logged(samples: pd.DataFrame, task: str) -> set[str]:
    """Metric names a side logged per sample for a task."""
    return set().union(*(json.loads(c).keys() for c in samples.loc[samples["task"] == task, "lm_correct"]))
