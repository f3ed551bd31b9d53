"""Metrics of a compressed model against its baseline, as pure functions of the paired samples table.

Definitions follow DESIGN.md §Metrics (b = baseline, c = compressed, N paired docs): lost = #(b right,
c wrong)/N, gained = #(b wrong, c right)/N, flips = lost + gained, label_loyalty = mean(pred_b == pred_c),
kl = KL(p_b || p_c) in nats. Correctness is lm-eval's own logged per-sample value; multiple-choice predictions
and choice distributions come from the scores lm-eval's rule for the metric takes the argmax of
(:mod:`flipbench.scoring`), so every reported metric can be rebuilt from ``samples.parquet`` without a model.
No I/O, no printing, no model loading.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr, softmax

from flipbench import klstats, scoring, trajectory
from flipbench.config import parse_correct_if
from flipbench.schema import INVALID
from flipbench.stats import (benjamini_hochberg, clopper_pearson, cohen_kappa, holm, mcnemar_exact, nanmean_last,
                             paired_bootstrap, tango_interval)

MULTIPLE_CHOICE, GENERATIVE = "multiple_choice", "generate_until"
MC_METRICS = tuple(scoring.RULES)
WHOLE_TASK = "all"  # value of `group` on the summary rows that cover a whole task
LEVELS = ("task", "category", "group")  # summary `level`: whole task, lm-eval category group (MMLU's stem...), subject
KL_UNIT = "KL(base||comp), nats"
DEFAULT_MARGIN_BINS = (0, 0.1, 0.25, 0.5, 1.0)

SUMMARY_COLUMNS = [
    "task", "group", "level", "metric", "filter", "headline", "n",
    "acc_base", "acc_comp", "delta_acc", "flips", "lost", "gained",
    "label_loyalty", "all_flips", "prob_loyalty",
    *klstats.KL_COLUMNS, "kl_doc_mean", "kl_scope",
    "kappa", "mcnemar_p", "mcnemar_p_holm", "mcnemar_q_bh",
    "flips_ci_low", "flips_ci_high", "lost_ci_low", "lost_ci_high", "gained_ci_low", "gained_ci_high",
    "delta_acc_ci_low", "delta_acc_ci_high",
    "label_loyalty_ci_low", "label_loyalty_ci_high", "kl_mean_ci_low", "kl_mean_ci_high",
    # generative only (NaN for multiple choice)
    *klstats.TOKEN_ONLY, "answer_agreement", "invalid_base", "invalid_comp", "flips_to_invalid",
    "lost_to_invalid", "lost_to_wrong", "n_tokens",
    "kl_unit", "n_kl", "n_nonfinite", "n_pred_mismatch",
    # generative only: where the two generations part (flipbench.trajectory) and token agreement (flipbench.klstats)
    *trajectory.SUMMARY, *klstats.AGREEMENT_COLUMNS,
    # generative with suite.think_end: the reasoning span's length and closure per side (flipbench.trajectory)
    *trajectory.THINK_SUMMARY,
    # generative: token KL and agreement over the prompt's own tokens (prefill), apart from the answer's (klstats)
    *klstats.PREFILL_SUMMARY,
]
MARGIN_COLUMNS = ["task", "metric", "filter", "bin", "bin_low", "bin_high", "n", "flips", "flip_rate"]

# Smallest positive float: a choice the compressed model rules out (p underflows to 0) costs a large but
# finite KL instead of inf, which would swamp every mean it enters.
_P_FLOOR = np.finfo(float).tiny

# Statistics bootstrapped per summary row; each maps (R, N) resampled columns to (R,). flips, lost and
# gained get exact Clopper-Pearson intervals instead, delta_acc Tango's paired score interval (a percentile
# bootstrap gives [0, 0] when no answer changed, and is too narrow at small n).
# kl_mean is sum(KL) / count over the resampled docs: per doc, one choice KL (count 1) or its answer tokens'
# KL sum and count, so the token-weighted mean is resampled by whole docs.
DELTA_ACC_INTERVAL = "Tango's score interval for paired proportions"
_BOOTSTRAP = {
    "label_loyalty": lambda s: s["agree"].mean(axis=-1),
    "kl_mean": lambda s: _ratio(np.nansum(s["kl_sum"], axis=-1), s["kl_count"].sum(axis=-1)),
}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def choice_distribution(ll) -> np.ndarray:
    """Softmax of choice log-likelihoods over the last axis: (..., K) nats -> (..., K) probabilities."""
    return softmax(np.asarray(ll, dtype=float), axis=-1)


def choice_divergence(p_base, p_comp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row (kl, js, margin_base) of choice distributions shaped (..., K).

    kl = KL(p_base || p_comp) in nats (p_comp floored at the smallest positive float to stay finite);
    js = Jensen-Shannon distance, base 2 (scipy's ``jensenshannon``, in [0, 1]);
    margin_base = top-1 minus top-2 probability of p_base (the top-1 probability when K == 1).
    Rows containing NaN give NaN.
    """
    p_b, p_c = np.asarray(p_base, dtype=float), np.asarray(p_comp, dtype=float)
    if p_b.shape != p_c.shape or p_b.ndim == 0:
        raise ValueError(f"choice distributions must share a shape (..., K), got {p_b.shape}, {p_c.shape}")
    # KL >= 0 (Gibbs); a sum of signed rel_entr terms can round to -1e-17, which would read as a bug
    kl = np.maximum(rel_entr(p_b, np.clip(p_c, _P_FLOOR, None)).sum(axis=-1), 0.0)
    js = jensenshannon(p_b, p_c, base=2, axis=-1)
    top = np.sort(p_b, axis=-1)
    margin = top[..., -1] - (top[..., -2] if p_b.shape[-1] > 1 else 0.0)
    return kl, js, margin


def _float_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame:
        return np.full(len(frame), np.nan)
    # a writable copy: pandas may hand out read-only views (copy-on-write)
    return np.array(pd.to_numeric(frame[name], errors="coerce"), dtype=float)


def annotate(paired: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Return a copy of the paired table with p_base, p_comp, kl, kl_norm, js, margin_base filled for MC rows.

    Choice KL has one scale whatever the metric: p = softmax of the raw choice log-likelihoods, and kl, js come
    from it on every multiple-choice row. ``kl_norm`` is the same KL over the scores the prediction under
    ``metric`` takes the argmax of (default: each row's own ``metric``; :mod:`flipbench.scoring`: ll for acc,
    ll / characters for acc_norm, ll / bytes for acc_bytes, ll - unconditional ll for acc_mutual_info), kept
    beside it, and margin_base (top-1 minus top-2 probability) is read from those scores too, since they decide
    the answer. Rows may have different numbers of choices. Generative rows keep their token-level ``kl``,
    ``same_top`` and ``n_tokens`` (NaN where absent) and get empty p lists and NaN js / kl_norm / margin_base;
    MC rows get NaN same_top / n_tokens.
    """
    out = paired.copy()
    n = len(out)
    mc = (out["output_type"] == MULTIPLE_CHOICE).to_numpy()
    p_base, p_comp = [[] for _ in range(n)], [[] for _ in range(n)]
    kl, js, margin = _float_column(out, "kl"), np.full(n, np.nan), np.full(n, np.nan)
    kl_norm = np.full(n, np.nan)
    same_top, n_tokens = _float_column(out, "same_top"), _float_column(out, "n_tokens")
    kl[mc] = same_top[mc] = n_tokens[mc] = np.nan

    rule = out["metric"] if metric is None else pd.Series(metric, index=out.index)
    for name in rule[mc].unique():
        mc_rows = np.flatnonzero(mc & (rule == name).to_numpy())
        mc_frame = out.iloc[mc_rows]
        raw = zip(scoring.side_scores(mc_frame, "base", "acc"), scoring.side_scores(mc_frame, "comp", "acc"))
        normalised = zip(scoring.side_scores(mc_frame, "base", name), scoring.side_scores(mc_frame, "comp", name))
        for ((pos, ll_b), (_, ll_c)), ((_, s_b), (_, s_c)) in zip(raw, normalised):
            rows = mc_rows[pos]
            with np.errstate(invalid="ignore", over="ignore"):  # diverged (non-finite) scores -> NaN rows
                dist_b, dist_c = choice_distribution(ll_b), choice_distribution(ll_c)
                kl[rows], js[rows], _ = choice_divergence(dist_b, dist_c)
                kl_norm[rows], _, margin[rows] = choice_divergence(choice_distribution(s_b), choice_distribution(s_c))
            for row, p_b, p_c in zip(rows, dist_b.tolist(), dist_c.tolist()):
                p_base[row], p_comp[row] = p_b, p_c
    out["p_base"], out["p_comp"] = p_base, p_comp
    out["kl"], out["kl_norm"], out["js"], out["margin_base"] = kl, kl_norm, js, margin
    out["same_top"], out["n_tokens"] = same_top, n_tokens
    return out


def predictions(df: pd.DataFrame, side: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """One side's (pred, correct) per row under ``metric``.

    MC rows: pred = argmax of the metric's normalised scores (:func:`flipbench.scoring.mc_predictions`), as
    the index as a string; correct = lm-eval's logged value (pred ∈ gold where none is stored).
    Generative rows return the stored ``pred_<side>`` / ``correct_<side>``. ``correct`` is an int array of 0/1.
    """
    pred, correct, _ = _side_predictions(df, side, metric)
    return pred, correct


def _side_predictions(df: pd.DataFrame, side: str, metric: str,
                      rule: tuple[str, float] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`predictions` plus the number of MC rows whose recomputed prediction contradicts lm-eval's
    logged correctness (from the same rescoring, so the summary does not score the rows twice). With ``rule``
    (a continuous metric's ``suite.correct_if``), correctness is lm-eval's logged value compared with it."""
    if side not in ("base", "comp"):
        raise ValueError(f"side must be 'base' or 'comp', got {side!r}")
    pred = df[f"pred_{side}"].to_numpy(dtype=object).copy()
    correct = _float_column(df, f"correct_{side}")
    mc_rows = np.flatnonzero((df["output_type"] == MULTIPLE_CHOICE).to_numpy())
    mismatches = 0
    if mc_rows.size:
        chosen, lm_correct, mismatch = scoring.mc_predictions(df.iloc[mc_rows], side, metric, binary=rule is None)
        pred[mc_rows] = chosen.astype(str).astype(object)
        correct[mc_rows] = lm_correct
        mismatches = int(mismatch.sum()) if rule is None else 0
    if rule is not None:
        correct = scoring.apply_rule(df[f"lm_correct_{side}"] if f"lm_correct_{side}" in df else
                                     pd.Series([None] * len(df)), metric, rule).astype(float)
    if not np.isin(correct, (0, 1)).all():
        raise ValueError(f"correct_{side} must be 0/1 on every generative row")
    return pred, correct.astype(int), mismatches


def _metric_specs(task: str, frame: pd.DataFrame, metrics_by_task) -> tuple[str, list[tuple[str, str]]]:
    """(output_type, [(metric, filter), ...]) reported for a task; the first pair is the headline."""
    kinds = frame["output_type"].unique()
    if len(kinds) != 1 or kinds[0] not in (MULTIPLE_CHOICE, GENERATIVE):
        raise ValueError(f"task {task!r}: expected one output_type of {MULTIPLE_CHOICE}/{GENERATIVE}, got {kinds}")
    stored = list(frame["metric"].unique())
    if metrics_by_task and task in metrics_by_task:
        metrics = list(metrics_by_task[task])
    elif len(stored) == 1:
        metrics = stored
    else:
        raise ValueError(f"task {task!r}: rows disagree on the headline metric {stored}; pass metrics_by_task")
    # MC: lm-eval's decision rules and whatever it logged per sample; generative: stored correctness only
    allowed = sorted(set(MC_METRICS) | _logged_names(frame)) if kinds[0] == MULTIPLE_CHOICE else stored
    unknown = [m for m in metrics if m not in allowed]
    if not metrics or unknown:
        raise ValueError(f"task {task!r}: cannot report metrics {unknown or metrics}; available: {list(allowed)}")
    return kinds[0], [(m, f) for m in metrics for f in frame["filter"].unique()]


def _logged_names(frame: pd.DataFrame) -> set[str]:
    names: set[str] = set()
    for cell in frame.get("lm_correct_base", pd.Series(dtype=object)).dropna().unique():
        names.update(json.loads(cell) if cell else {})
    return names


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else np.nan


def _row_has_nonfinite(row_values) -> bool:
    return any(isinstance(cell, (list, tuple, np.ndarray)) and len(cell) and not np.isfinite(scoring.floats(cell)).all()
               for cell in row_values)


def _n_nonfinite(rows: pd.DataFrame) -> int:
    """Docs with a non-finite log-prob on either side, whatever the task type: a choice log-likelihood
    (conditional or unconditional), an answer token's log-prob, or a token KL that was computed but is not finite."""
    columns = [c for c in ("ll_base", "ll_comp", "ll_uncond_base", "ll_uncond_comp", "tok_logp_base",
                           "tok_logp_comp", "tok_kl") if c in rows]
    bad = np.array([_row_has_nonfinite(values) for values in zip(*(rows[c] for c in columns))], dtype=bool) \
        if columns and len(rows) else np.zeros(len(rows), dtype=bool)
    generative = (rows["output_type"] == GENERATIVE).to_numpy()
    scored = np.nan_to_num(_float_column(rows, "n_tokens")) > 0
    bad |= generative & scored & ~np.isfinite(_float_column(rows, "kl"))
    return int(bad.sum())


def _generative_extras(rows: pd.DataFrame, pred_b: np.ndarray, pred_c: np.ndarray, lost: np.ndarray) -> dict:
    """Answer-level shares; ``lost`` marks b right, c wrong, split by whether c's answer became [invalid]."""
    invalid_b, invalid_c = pred_b == INVALID, pred_c == INVALID
    n_tokens = _float_column(rows, "n_tokens")
    to_invalid = _mean(lost & invalid_c)  # right -> [invalid] only (wrong -> [invalid] is no flip)
    return {
        "answer_agreement": _mean(pred_b == pred_c),
        "invalid_base": _mean(invalid_b),
        "invalid_comp": _mean(invalid_c),
        "flips_to_invalid": to_invalid,
        "lost_to_invalid": to_invalid,
        "lost_to_wrong": _mean(lost & ~invalid_c),
        "n_tokens": np.nansum(n_tokens) if np.isfinite(n_tokens).any() else np.nan,
        **trajectory.summary_record(rows), **klstats.agreement_stats(rows), **trajectory.think_record(rows),
        **klstats.prefill_stats(rows),
    }


def _kl_record(rows: pd.DataFrame, kind: str, kl: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """(KL statistics in its scope, per-doc KL sum, per-doc KL count) for the bootstrap of kl_mean."""
    finite = np.isfinite(kl)
    if kind == MULTIPLE_CHOICE:
        return klstats.choice_stats(kl), np.where(finite, kl, np.nan), finite.astype(float)
    record = klstats.token_stats(rows)
    record["kl_doc_mean"] = float(kl[finite].mean()) if finite.any() else np.nan
    sums, counts = klstats.token_sums(rows)
    return record, sums, counts


def _summary_row(rows: pd.DataFrame, kind: str, metric: str, n_resamples: int, seed: int,
                 margin_bins: Sequence[float] | None, rule: tuple[str, float] | None = None,
                 confidence: float = 0.95) -> dict:
    """All summary statistics of one set of paired rows under one metric (rows share one filter)."""
    pred_b, correct_b, mismatch_b = _side_predictions(rows, "base", metric, rule)
    pred_c, correct_c, mismatch_c = _side_predictions(rows, "comp", metric, rule)
    agree = pred_b == pred_c
    lost_n = int(((correct_b == 1) & (correct_c == 0)).sum())
    gained_n = int(((correct_b == 0) & (correct_c == 1)).sum())
    n = len(rows)
    kl = _float_column(rows, "kl")
    kl_record, kl_sum, kl_count = _kl_record(rows, kind, kl)
    js = _float_column(rows, "js")
    kl_norm = _float_column(rows, "kl_norm")
    record = {
        "n": n, "acc_base": _mean(correct_b), "acc_comp": _mean(correct_c),
        "delta_acc": _mean(correct_c - correct_b),
        "flips": (lost_n + gained_n) / n if n else np.nan,
        "lost": lost_n / n if n else np.nan, "gained": gained_n / n if n else np.nan,
        "label_loyalty": _mean(agree), "all_flips": 1 - _mean(agree),
        "prob_loyalty": 1 - float(nanmean_last(js)) if kind == MULTIPLE_CHOICE and n else np.nan,
        **kl_record,
        "kl_scope": "choice" if kind == MULTIPLE_CHOICE else "token",
        "kl_norm_mean": _mean(kl_norm[np.isfinite(kl_norm)]) if kind == MULTIPLE_CHOICE else np.nan,
        "kappa": cohen_kappa(pred_b, pred_c), "mcnemar_p": mcnemar_exact(lost_n, gained_n),
        "kl_unit": KL_UNIT, "n_kl": int(np.isfinite(kl).sum()), "n_nonfinite": _n_nonfinite(rows),
        "n_pred_mismatch": mismatch_b + mismatch_c,
    }
    for name, count in (("flips", lost_n + gained_n), ("lost", lost_n), ("gained", gained_n)):
        record[f"{name}_ci_low"], record[f"{name}_ci_high"] = clopper_pearson(count, n, confidence)
    record["delta_acc_ci_low"], record["delta_acc_ci_high"] = tango_interval(gained_n, lost_n, n, confidence)
    columns = {"agree": agree.astype(np.int8), "kl_sum": kl_sum, "kl_count": kl_count}
    for name, (low, high) in paired_bootstrap(columns, _BOOTSTRAP, n_resamples, seed, confidence).items():
        record[f"{name}_ci_low"], record[f"{name}_ci_high"] = low, high
    if kind == GENERATIVE:
        record.update(_generative_extras(rows, pred_b, pred_c, (correct_b == 1) & (correct_c == 0)))
    elif margin_bins is not None:
        flips_by_bin = _bin_flips(_float_column(rows, "margin_base"), correct_b != correct_c, margin_bins)
        record.update({f"flip_rate_margin_{low:g}_{high:g}": rate for low, high, rate in zip(
            flips_by_bin["bin_low"], flips_by_bin["bin_high"], flips_by_bin["flip_rate"])})
    return record


def _bin_flips(margin: np.ndarray, flipped: np.ndarray, bins: Sequence[float]) -> pd.DataFrame:
    """Flip counts per margin bin. Bin i holds low < m <= high; the first bin also holds m == low.
    Docs with a NaN margin or one outside the bins are not counted."""
    edges = np.asarray(bins, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or not (np.diff(edges) > 0).all():
        raise ValueError(f"margin bins must be at least two strictly increasing edges, got {bins}")
    n_bins = edges.size - 1
    index = np.searchsorted(edges, margin, side="left") - 1
    index[margin == edges[0]] = 0
    valid = np.isfinite(margin) & (index >= 0) & (index < n_bins)
    n = np.bincount(index[valid], minlength=n_bins)
    flips = np.bincount(index[valid], weights=flipped[valid].astype(float), minlength=n_bins).astype(int)
    labels = [f"{'[' if i == 0 else '('}{edges[i]:g}, {edges[i + 1]:g}]" for i in range(n_bins)]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(n > 0, flips / np.maximum(n, 1), np.nan)
    return pd.DataFrame({"bin": labels, "bin_low": edges[:-1], "bin_high": edges[1:],
                         "n": n, "flips": flips, "flip_rate": rate})


def _task_subsets(frame: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(group, level, rows): the whole task (group "all") first, then each lm-eval category (MMLU's stem,
    humanities, ...; sorted) where the rows name one, then each group, sorted, when the task has more than one."""
    groups = sorted(frame["group"].astype(str).unique())
    categories = frame["category"].fillna("").astype(str) if "category" in frame else pd.Series("", index=frame.index)
    names = sorted(c for c in categories.unique() if c)
    if WHOLE_TASK in groups + names:
        raise ValueError(f"group name {WHOLE_TASK!r} is reserved for whole-task summary rows")
    if set(names) & set(groups):
        raise ValueError(f"{sorted(set(names) & set(groups))[0]!r} names both a category and a group of one task")
    subsets = [(WHOLE_TASK, "task", frame)] + [(c, "category", frame[categories == c]) for c in names]
    if len(groups) < 2:
        return subsets
    return subsets + [(g, "group", frame[frame["group"].astype(str) == g]) for g in groups]


def _adjust_p_values(summary: pd.DataFrame) -> pd.DataFrame:
    """mcnemar_p Holm- and BH-adjusted per family: a task's subject rows (or its category rows) of one
    (metric, filter); the tasks' headline whole-task rows; the tasks' other whole-task rows."""
    whole = summary["group"] == WHOLE_TASK
    family = np.where(whole, "all:" + summary["headline"].astype(str),
                      summary["level"].astype(str) + ":" + summary["task"] + ":" + summary["metric"] + ":"
                      + summary["filter"].astype(str))
    summary["mcnemar_p_holm"], summary["mcnemar_q_bh"] = np.nan, np.nan
    for key in pd.unique(family):
        rows = np.flatnonzero(family == key)
        p = summary["mcnemar_p"].to_numpy(dtype=float)[rows]
        summary.loc[summary.index[rows], "mcnemar_p_holm"] = holm(p)
        summary.loc[summary.index[rows], "mcnemar_q_bh"] = benjamini_hochberg(p)
    return summary


def summarize(
    samples: pd.DataFrame,
    *,
    metrics_by_task: dict[str, list[str]] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    margin_bins: Sequence[float] | None = DEFAULT_MARGIN_BINS,
    correct_if: dict[str, str] | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per-task (and per-group) summary of the paired samples table; columns start with SUMMARY_COLUMNS.

    Tasks appear in order of first appearance. Per task, rows for group "all" (the whole task) come first,
    then, only where the task has more than one group, the same rows per group (groups sorted). Within
    each, one row per (metric, filter): metrics from ``metrics_by_task[task]`` (default: the rows'
    ``metric`` value), filters in order of appearance. The first (metric, filter) is the headline:
    ``headline`` is True on its rows at every level, so ``headline & (group == "all")`` is one row per task.
    MC KL is recomputed from the raw log-likelihoods (choice-level, one scale for every metric; ``kl_norm_mean``
    beside it over the metric's own scores); generative KL is the stored token-level ``kl`` (NaN until
    computed). KL statistics use finite values only (``n_kl`` rows; ``n_nonfinite`` counts docs with a
    non-finite log-prob on either side, any task type); generative rows use the token-weighted statistics of
    flipbench.klstats and keep the per-doc mean as ``kl_doc_mean``. ``correct_if`` (task -> ">=0.5"-style rule)
    defines correctness of a continuous headline metric from lm-eval's logged value. CIs at ``confidence``
    (95%): exact Clopper-Pearson for flips, lost, gained; Tango's score interval for delta_acc; paired
    percentile bootstrap over docs for the rest, same seed for every row (``n_resamples=0`` leaves those NaN).
    ``mcnemar_p_holm`` / ``mcnemar_q_bh`` adjust ``mcnemar_p`` within families (see ``_adjust_p_values``). A (group, filter) without rows gets n = 0 and NaN statistics. With ``margin_bins``,
    MC rows also get ``flip_rate_margin_<low>_<high>`` columns (see ``flip_rate_by_margin``).
    """
    if len(samples) == 0:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    records = []
    rules = {task: parse_correct_if(rule, f"suite.correct_if.{task}") for task, rule in (correct_if or {}).items()}
    for task, frame in samples.groupby("task", sort=False):
        kind, specs = _metric_specs(task, frame, metrics_by_task)
        # choice distributions, KL and margins under each reported metric's own scores
        scored = {metric: annotate(frame, metric) for metric in dict.fromkeys(m for m, _ in specs)}
        for group, level, subset in _task_subsets(frame):
            for position, (metric, filter_name) in enumerate(specs):
                rows = scored[metric].loc[subset.index[subset["filter"] == filter_name]]
                record = {"task": task, "group": group, "level": level, "metric": metric, "filter": filter_name,
                          "headline": position == 0}
                rule = rules.get(task) if position == 0 else None  # the rule is the headline metric's
                record.update(_summary_row(rows, kind, metric, n_resamples, seed, margin_bins, rule, confidence))
                records.append(record)
    summary = _adjust_p_values(pd.DataFrame.from_records(records))
    extra = [c for c in summary.columns if c not in SUMMARY_COLUMNS]
    return summary.reindex(columns=SUMMARY_COLUMNS + extra)


def flip_rate_by_margin(
    samples: pd.DataFrame,
    bins: Sequence[float] = DEFAULT_MARGIN_BINS,
    *,
    metrics_by_task: dict[str, list[str]] | None = None,
    correct_if: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Flip rate of MC docs binned by the baseline's margin (p_b top-1 - top-2): where do flips happen?

    One row per (task, metric, filter, bin) with columns MARGIN_COLUMNS; flips counts docs whose
    correctness changed, flip_rate = flips / n (NaN for an empty bin). Bins are (low, high], the first
    closed on the left. Metrics and ``correct_if`` as in ``summarize``; generative rows are ignored.
    """
    mc = samples[samples["output_type"] == MULTIPLE_CHOICE]
    if len(mc) == 0:
        return pd.DataFrame(columns=MARGIN_COLUMNS)
    tables = []
    rules = {task: parse_correct_if(rule, f"suite.correct_if.{task}") for task, rule in (correct_if or {}).items()}
    for task, frame in mc.groupby("task", sort=False):
        for position, (metric, filter_name) in enumerate(_metric_specs(task, frame, metrics_by_task)[1]):
            rows = annotate(frame[frame["filter"] == filter_name], metric)
            rule = rules.get(task) if position == 0 else None
            flipped = _side_predictions(rows, "base", metric, rule)[1] != _side_predictions(rows, "comp", metric, rule)[1]
            table = _bin_flips(rows["margin_base"].to_numpy(), flipped, bins)
            table.insert(0, "task", task)
            table.insert(1, "metric", metric)
            table.insert(2, "filter", filter_name)
            tables.append(table)
    return pd.concat(tables, ignore_index=True)[MARGIN_COLUMNS]
