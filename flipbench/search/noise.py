"""Compression noise in the search's ranking: with ``compression.replicas=K`` every full-fidelity run of a method that
draws calibration compresses K times (flipbench/replicas.py), and its summary gives each task's flip range over the
replicas (``flips_rep_min`` .. ``flips_rep_max``). Data-free methods (RTN) run once: their replicas are identical by
construction, so their range is their one value.

Two configurations are *distinguished* by flips when on at least one task their replica ranges do not overlap
(:func:`flipbench.replicas.distinguished`); when the ranges overlap on every task, no flip difference between them
survives the compression's own instability, and the search reports them as not distinguished.
"""

from __future__ import annotations

import math

import pandas as pd

from flipbench.replicas import distinguished

RANGE_COLUMNS = ["flips_rep_min", "flips_rep_median", "flips_rep_max", "replicas"]
WORST = {c: f"worst_{c}" for c in RANGE_COLUMNS[:3]}  # configurations: the worst task's range


def task_ranges(full: pd.DataFrame) -> dict[str, dict[str, tuple[float, float]]]:
    """Label -> task -> (min, max) replica flips, from trials.csv's full-fidelity rows (rows without a range left out)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    if "flips_rep_min" not in full:
        return out
    for _, row in full.drop_duplicates(["label", "task"], keep="last").iterrows():
        lo, hi = float(row["flips_rep_min"]), float(row["flips_rep_max"])
        if not (math.isnan(lo) or math.isnan(hi)):
            out.setdefault(row["label"], {})[row["task"]] = (lo, hi)
    return out


def apart(a: dict[str, tuple[float, float]], b: dict[str, tuple[float, float]]) -> bool | None:
    """Distinguished by flips on some task both were scored on? None when they share no task with a range."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    return any(distinguished(a[task], b[task]) for task in shared)


def annotate(configs: pd.DataFrame, full: pd.DataFrame) -> pd.DataFrame:
    """Add to the ranked configurations (one row each) ``not_distinguished_from`` (the other configurations whose
    replica ranges overlap on every shared task, ';'-joined) and ``distinguished_from_next`` (against the next row of
    the ranking). Both are empty where a configuration has no replica range (a search without replicas)."""
    out = configs.copy()
    ranges = task_ranges(full)
    labels = out["label"].tolist()
    same, following = [], []
    for i, label in enumerate(labels):
        mine = ranges.get(label, {})
        same.append(";".join(other for other in labels if other != label and apart(mine, ranges.get(other, {})) is False))
        nxt = apart(mine, ranges.get(labels[i + 1], {})) if i + 1 < len(labels) else None
        following.append("" if nxt is None else nxt)
    out["not_distinguished_from"], out["distinguished_from_next"] = same, following
    return out


def versus_runner_up(ranked: pd.DataFrame, full: pd.DataFrame) -> dict | None:
    """The recommendation's compression-noise statement: the first-ranked configuration against the second (the
    next passing one by cost, else the nearest miss). None when the search ran without replicas."""
    ranges = task_ranges(full)
    if ranked.empty or not any(len(r) for r in ranges.values()) or "replicas" not in full:
        return None
    chosen = ranked.iloc[0]
    out = {"replicas": int(pd.to_numeric(full["replicas"], errors="coerce").max()),
           "flips_range": {task: [lo, hi] for task, (lo, hi) in sorted(ranges.get(chosen["label"], {}).items())},
           "runner_up": None, "distinguished_from_runner_up": None,
           "not_distinguished_from": [x for x in str(chosen.get("not_distinguished_from") or "").split(";") if x]}
    if len(ranked) > 1:
        runner = ranked.iloc[1]
        out["runner_up"] = runner["label"]
        out["runner_up_passes"] = bool(runner["passes"])
        out["distinguished_from_runner_up"] = apart(ranges.get(chosen["label"], {}), ranges.get(runner["label"], {}))
    return out
