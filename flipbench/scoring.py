"""Per-document scoring of multiple-choice rows: lm-eval's own correctness, and the scores its prediction uses.

Correctness is never recomputed when lm-eval logged it: each side's ``lm_correct_<side>`` cell holds lm-eval's
per-sample value of every numeric metric it computed for the row (``acc``, ``acc_norm``, ``acc_bytes``,
``acc_mutual_info``, ``exact_match``, ...), so several gold answers and multiple-input (Winogrande-style)
tasks count exactly as lm-eval counts them. The prediction (for loyalty and for the choice distribution) is
recomputed from the stored log-likelihoods with lm-eval's decision rule for the metric (:data:`RULES`) and
checked against lm-eval's value wherever the rule is known: a disagreement is a ``pred_mismatch``.

Normalised scores s_k of choice k (ll_k: log-likelihood of choice k in nats):
``acc`` s_k = ll_k; ``acc_norm`` s_k = ll_k / characters_k; ``acc_bytes`` s_k = ll_k / UTF-8 bytes_k;
``acc_mutual_info`` s_k = ll_k - ll_k(unconditional). pred = argmax_k s_k (ties to the lowest index, as
numpy's argmax in lm-eval); the choice distribution is softmax(s). For a multiple-input task the "choices" are
the contexts and ll_k is the shared continuation's log-likelihood after context k (lm-eval normalises by the
length of doc_to_choice's strings there too). Other metrics (e.g. ``exact_match`` on a multiple-choice task)
use s = ll and are not checked.
"""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import pandas as pd

MULTIPLE_CHOICE = "multiple_choice"
RULES = {
    "acc": "argmax ll",
    "acc_norm": "argmax ll / characters",
    "acc_bytes": "argmax ll / UTF-8 bytes",
    "acc_mutual_info": "argmax ll - unconditional ll",
}


def gold_indices(target) -> list[int]:
    """Gold choice indices from the stored ``target`` of an MC row: "2", "0,3" (several gold answers), "" (none)."""
    text = str(target).strip()
    return [int(part) for part in text.split(",") if part.strip()] if text else []


def format_gold(gold: list[int]) -> str:
    return ",".join(str(int(g)) for g in gold)


def normalised_scores(metric: str, ll: np.ndarray, characters: np.ndarray, utf8_bytes: np.ndarray,
                      ll_uncond: np.ndarray | None) -> np.ndarray:
    """(R, K) choice scores the prediction under ``metric`` takes the argmax of (module docstring)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "acc_norm":
            return ll / characters
        if metric == "acc_bytes":
            return ll / utf8_bytes
    if metric == "acc_mutual_info":
        if ll_uncond is None or ll_uncond.shape != ll.shape:
            raise ValueError("acc_mutual_info needs the unconditional log-likelihood of every choice")
        return ll - ll_uncond
    return ll


def lm_correct(cell, metric: str) -> float:
    """lm-eval's logged value of ``metric`` in one ``lm_correct`` cell (JSON text), NaN where it is absent."""
    if not isinstance(cell, str) or not cell:
        return np.nan
    value = json.loads(cell).get(metric)
    return np.nan if value is None else float(value)


def floats(cell) -> np.ndarray:
    """A list cell as floats; parquet stores a NaN inside a list as null, which comes back as None."""
    return np.array([np.nan if v is None else v for v in cell], dtype=float)


def _by_choice_count(rows: pd.DataFrame, columns: list[str]) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Rows grouped by their number of choices: yields (row positions, {column: (R, K) floats})."""
    lengths = rows["choices"].map(len).to_numpy()
    for column in columns:
        bad = np.flatnonzero(rows[column].map(len).to_numpy() != lengths)
        if bad.size:
            raise ValueError(f"{column} and choices differ in length at rows {bad[:5].tolist()}")
    for k in np.unique(lengths):
        pos = np.flatnonzero(lengths == k)
        yield pos, {c: np.array([floats(v) for v in rows[c].iloc[pos]], dtype=float).reshape(len(pos), k)
                    for c in columns}


def side_scores(rows: pd.DataFrame, side: str, metric: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One side's normalised scores of MC rows under ``metric``: yields (row positions, (R, K) scores).

    Rows need ``choices``, ``choice_len`` and ``ll_<side>``; ``acc_mutual_info`` also ``ll_uncond_<side>``.
    """
    columns = [f"ll_{side}", "choice_len"]
    if metric == "acc_mutual_info":
        uncond = f"ll_uncond_{side}"
        if uncond not in rows or (rows[uncond].map(len) != rows["choices"].map(len)).any():
            raise ValueError(f"acc_mutual_info needs {uncond}, the unconditional log-likelihood of every choice; "
                             "lm-eval computes them only for tasks whose metric_list names acc_mutual_info")
        columns.append(uncond)
    utf8 = rows["choices"].map(lambda cs: [len(str(c).encode("utf-8")) for c in cs])
    frame = rows.assign(_bytes=utf8.to_numpy())
    for pos, cells in _by_choice_count(frame, columns + ["_bytes"]):
        yield pos, normalised_scores(metric, cells[f"ll_{side}"], cells["choice_len"], cells["_bytes"],
                                     cells.get(f"ll_uncond_{side}"))


def mc_predictions(rows: pd.DataFrame, side: str, metric: str,
                   binary: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred index, lm-eval's correctness, pred_mismatch) per MC row under ``metric``.

    Correctness is lm-eval's logged value (``lm_correct_<side>``); where none is stored (tables written by
    hand or by older versions) it is pred ∈ gold. pred_mismatch is True where lm-eval's value exists, the
    metric's rule is known (:data:`RULES`) and pred ∈ gold disagrees with it. A logged value other than 0 or 1
    is an error unless ``binary`` is False (the caller applies a ``suite.correct_if`` rule instead).
    """
    n = len(rows)
    pred = np.zeros(n, dtype=int)
    for pos, scores in side_scores(rows, side, metric):
        pred[pos] = np.argmax(scores, axis=-1)  # NaN scores: argmax returns the first NaN, as numpy in lm-eval
    recomputed = np.array([p in gold_indices(t) for p, t in zip(pred, rows["target"])], dtype=bool)
    cells = rows[f"lm_correct_{side}"] if f"lm_correct_{side}" in rows else pd.Series([None] * n)
    logged = np.array([lm_correct(c, metric) for c in cells], dtype=float)
    has = np.isfinite(logged)
    if metric not in RULES and not has.all():
        raise ValueError(f"multiple-choice rows are scored with {list(RULES)} or a metric lm-eval logged for "
                         f"every row, not {metric!r}")
    if binary and not np.isin(logged[has], (0.0, 1.0)).all():
        raise MetricError(continuous_metric_message(metric, logged[has]))
    correct = np.where(has, logged > 0, recomputed).astype(int)
    mismatch = has & (metric in RULES) & ((logged > 0) != recomputed)
    return pred, correct, mismatch


class MetricError(ValueError):
    """A headline metric that is missing from lm-eval's logged sample, or continuous without a correctness rule."""


def continuous_metric_message(metric: str, values) -> str:
    shown = ", ".join(f"{v:.3g}" for v in np.unique(np.asarray(values, dtype=float))[:3])
    return (f"metric {metric!r} is not 0/1 per doc (values such as {shown}); flips need a binary correctness: set "
            f"suite.correct_if.<task>='>=0.5' (or '<=x' for a lower-is-better metric), or pick a 0/1 metric")


COMPARISONS = {">=": np.greater_equal, "<=": np.less_equal, ">": np.greater, "<": np.less}


def apply_rule(cells: pd.Series, metric: str, rule: tuple[str, float]) -> np.ndarray:
    """0/1 correctness from lm-eval's logged value of ``metric`` in each ``lm_correct`` cell, compared by ``rule``
    (e.g. (">=", 0.5)). A row without that value is an error, never a 0."""
    values = np.array([lm_correct(cell, metric) for cell in cells], dtype=float)
    missing = np.flatnonzero(~np.isfinite(values))
    if missing.size:
        raise MetricError(f"metric {metric!r} is missing from lm-eval's logged values of {missing.size} row(s); "
                          "it cannot be scored by suite.correct_if")
    op, threshold = rule
    return COMPARISONS[op](values, threshold).astype(int)


def binary_correct(value, metric: str, rule: tuple[str, float] | None = None) -> int:
    """0/1 correctness of one doc from lm-eval's logged value of ``metric``: by ``rule`` (suite.correct_if) when
    given, else the value itself, which must then be 0 or 1 (a continuous metric is never binarised silently)."""
    if isinstance(value, (bool, np.bool_)):
        value = float(value)
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise MetricError(f"metric {metric!r} logs {type(value).__name__} values, not a number per doc; flips need "
                          "a per-doc 0/1 or a number with suite.correct_if")
    value = float(value)
    if rule is not None:
        return int(COMPARISONS[rule[0]](value, rule[1]))
    if value not in (0.0, 1.0):
        raise MetricError(continuous_metric_message(metric, [value]))
    return int(value)


def logged_metrics(sample: dict) -> dict[str, float]:
    """lm-eval's numeric per-sample metric values in one logged sample (tuples such as f1's are left out)."""
    out = {}
    for name in sample.get("metrics", []):
        value = sample.get(name)
        if isinstance(value, (bool, int, float, np.integer, np.floating)):
            out[name] = float(value)
    return out


def count_mismatches(paired: pd.DataFrame) -> int:
    """Rows × sides where the recomputed prediction disagrees with lm-eval's logged value of the row's metric."""
    mc = paired[paired["output_type"] == MULTIPLE_CHOICE]
    total = 0
    for metric, rows in mc.groupby("metric", sort=False):
        total += sum(int(mc_predictions(rows, side, metric, binary=False)[2].sum()) for side in ("base", "comp"))
    return total
