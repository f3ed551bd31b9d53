"""Per-item prediction files: one row per question with the answer a model gave, from any harness.

A row (JSONL object or CSV line) holds ``doc_id`` and ``pred``, and ``gold`` unless an items file gives it; optional
``task`` (default ``items``), ``group`` (default: the task), ``probs`` (the choice probabilities: a list, or an
object {label: p}; in CSV a JSON text) and ``conf``. An items file holds ``doc_id`` and ``gold`` (and ``task``) with
no ``pred``: it is joined to the side it is given with (``BASE,items.jsonl``).

Rows become the side frame of :data:`flipbench.schema.SIDE_COLUMNS`:
- with ``probs``: a multiple-choice row scored by ``acc``; choices are the labels (the object's keys, else A, B, ...
  when the answers are letters, else 0, 1, ...), ``ll`` = ln p (p floored at the smallest positive float), so
  the choice distribution is p itself and choice KL is KL(p_base || p_comp);
- without: an answer row (output type ``generate_until``, filter ``none``): flips, loyalty and intervals from the
  answers alone, KL not available.
``correct`` = (pred == gold), both as text; ``doc_hash`` and ``prompt_hash`` are synthesized from task, group,
doc_id and gold (the prompts themselves are not known, so they are not checked: only that both sides name the
same docs with the same gold answers).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from flipbench.config import ConfigError

ITEMS, GOLD = "per-item file", "items file"
DEFAULT_TASK = "items"
_P_FLOOR = np.finfo(float).tiny


def first_record(path: Path) -> dict | None:
    """The first row of a JSONL or CSV file as a dict; None when it holds none."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            if path.suffix.lower() == ".csv":
                return next(csv.DictReader(handle), None)
            for line in handle:
                if line.strip():
                    value = json.loads(line)
                    return value if isinstance(value, dict) else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return None


def kind(path: Path, first: dict) -> str:
    if "doc_id" in first and "pred" in first:
        return ITEMS
    if "doc_id" in first and "gold" in first:
        return GOLD
    raise ConfigError(f"{path} is neither lm-eval output nor a per-item file (a row needs doc_id and pred, an items "
                      f"file doc_id and gold; the first row has {sorted(first)[:6]})")


def read_jsonl(path: Path, not_json: str, empty: str) -> list[dict]:
    """One JSON object a line (blank lines skipped); a line that is no JSON, or no line, is a ConfigError whose text
    ends with ``not_json`` / ``empty``."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise ConfigError(f"{path} line {number} is not JSON{not_json}") from None
    if not rows:
        raise ConfigError(f"{path} is empty; {empty}")
    return rows


def read_rows(path: Path) -> list[dict]:
    if path.suffix.lower() != ".csv":
        return read_jsonl(path, "", "give one row per item")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ConfigError(f"{path} is empty; give one row per item")
    return rows


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _doc_id(value, path: Path):
    text = _text(value)
    if not text:
        raise ConfigError(f"{path}: a row has no doc_id")
    return int(text) if text.lstrip("-").isdigit() else text


def _probs(value, path: Path, doc) -> dict[str, float] | list[float] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"{path}: probs of doc {doc} is not a JSON list or object") from None
    if not isinstance(value, (list, dict)) or not value:
        raise ConfigError(f"{path}: probs of doc {doc} must be a non-empty list or {{label: p}} object")
    return value


def _labels(probs, answers: list[str]) -> list[str]:
    if isinstance(probs, dict):
        return [str(k) for k in probs]
    letters = all(a.isalpha() and len(a) == 1 for a in answers if a)
    return [chr(ord("A") + i) for i in range(len(probs))] if letters else [str(i) for i in range(len(probs))]


def _gold_table(files: list[Path]) -> dict[tuple[str, object], str]:
    table: dict[tuple[str, object], str] = {}
    for path in files:
        for row in read_rows(path):
            key = (_text(row.get("task")) or DEFAULT_TASK, _doc_id(row.get("doc_id"), path))
            gold = _text(row.get("gold"))
            if key in table and table[key] != gold:
                raise ConfigError(f"{path}: {key[0]} doc {key[1]} has two gold answers ({table[key]!r}, {gold!r})")
            table[key] = gold
    return table


def _hash(*parts) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode("utf-8")).hexdigest()


def _row(raw: dict, path: Path, gold_table: dict) -> dict:
    task = _text(raw.get("task")) or DEFAULT_TASK
    group = _text(raw.get("group")) or task
    doc = _doc_id(raw.get("doc_id"), path)
    pred = _text(raw.get("pred"))
    gold = _text(raw.get("gold")) or gold_table.get((task, doc), "")
    if (task, doc) in gold_table and gold != gold_table[(task, doc)]:
        raise ConfigError(f"{path}: {task} doc {doc} has gold {gold!r}, the items file {gold_table[(task, doc)]!r}")
    if not gold:
        raise ConfigError(f"{path}: {task} doc {doc} has no gold answer; add a gold column or give an items file "
                          "(BASE.jsonl,items.jsonl)")
    correct = int(pred == gold)
    row = dict(task=task, group=group, category="", doc_id=doc, filter="none", metric="acc",
               doc_hash=_hash(task, group, doc, gold), prompt_hash=_hash(task, group, doc), prompt="",
               ll_uncond=[], correct=correct, lm_correct=json.dumps({"acc": float(correct)}), response="")
    probs = _probs(raw.get("probs"), path, doc)
    if probs is None:
        return {**row, "output_type": "generate_until", "target": gold, "choices": [], "choice_len": [], "ll": [],
                "pred": pred}
    labels = _labels(probs, [pred, gold])
    p = np.array(list(probs.values()) if isinstance(probs, dict) else probs, dtype=float)
    if not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ConfigError(f"{path}: probs of {task} doc {doc} must be finite, non-negative and not all 0")
    for name, answer in (("pred", pred), ("gold", gold)):
        if answer not in labels:
            raise ConfigError(f"{path}: {task} doc {doc}: {name} {answer!r} is not among the choices {labels} of probs")
    return {**row, "output_type": "multiple_choice", "target": str(labels.index(gold)), "choices": labels,
            "choice_len": [len(label) for label in labels], "ll": np.log(np.maximum(p / p.sum(), _P_FLOOR)).tolist(),
            "pred": str(labels.index(pred))}


def read_side(preds: list[Path], gold_files: list[Path], what: str) -> tuple[pd.DataFrame, list[str]]:
    """(side frame, notes) of one side's per-item files, gold joined from the items files."""
    from flipbench.artifact import order_rows
    from flipbench.schema import SIDE_COLUMNS

    gold_table = _gold_table(gold_files)
    rows, conf = [], False
    for path in preds:
        for raw in read_rows(path):
            rows.append(_row(raw, path, gold_table))
            conf |= _text(raw.get("conf")) != ""
    frame = pd.DataFrame(rows)
    if frame["doc_id"].map(type).nunique() > 1:  # some ids are numbers, some names: compare them all as text
        frame["doc_id"] = frame["doc_id"].astype(str)
    dupes = frame.duplicated(["task", "group", "doc_id"])
    if dupes.any():
        first = frame[dupes].iloc[0]
        raise ConfigError(f"{what}: {first['task']} doc {first['doc_id']} appears twice; give one row per item")
    notes = []
    for task, kinds in frame.groupby("task")["output_type"].agg(set).items():
        if len(kinds) > 1:
            raise ConfigError(f"{what}: {task} gives probs on some rows only; give them on every row or none")
        if kinds == {"generate_until"}:
            notes.append(f"{task}: the per-item files give no choice probabilities, so choice KL is not available "
                         "(flips, loyalty and intervals come from the answers alone)")
    notes.append("per-item files: prompts are not checked, only that both sides name the same docs and gold answers")
    if conf:
        notes.append("per-item files: conf (the chosen answer's probability) is read but not used; choice KL needs "
                     "probs over every choice")
    return order_rows(frame[list(SIDE_COLUMNS)]), notes
