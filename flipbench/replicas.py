"""Compression noise: how many flips come from the compressor's own instability rather than from the method.

``compression.replicas=K`` compresses K times from the same baseline, replica r drawing its calibration with
seed ``calibration.seed + r`` (and, where ``compression.replica_threads`` lists thread counts, running with
``threads[r mod len]``), and evaluates every replica on the same docs. Replica 0 is the run's compressed side (its
samples are ``samples.parquet``); the others only add these statistics:

- per doc ``flip_count``: in how many of the K replicas the doc flipped (correct_base != correct_comp), 0..K;
- per summary row (task, group, metric, filter): ``flips_rep_min``, ``flips_rep_median``, ``flips_rep_max`` over the
  replicas' flip rates, ``flips_robust`` (share of docs flipped in every replica) and ``flips_unstable`` (flipped in
  some replicas, not all), both over all N docs, so flips_robust + flips_unstable is the share flipped in any.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flipbench.pairing import PAIR_KEY

REPLICA_COLUMNS = ["flips_rep_min", "flips_rep_median", "flips_rep_max", "flips_robust", "flips_unstable", "replicas"]


def flipped_matrix(frames: list[pd.DataFrame]) -> np.ndarray:
    """(rows of frames[0], K) booleans: did the row flip in replica k. Every frame must hold the same rows."""
    first = frames[0][PAIR_KEY]
    columns = []
    for k, frame in enumerate(frames):
        aligned = first.merge(frame[PAIR_KEY + ["correct_base", "correct_comp"]], on=PAIR_KEY, how="left")
        if aligned["correct_comp"].isna().any():
            raise ValueError(f"replica {k} did not evaluate the same docs as replica 0")
        columns.append((aligned["correct_base"].to_numpy() != aligned["correct_comp"].to_numpy()))
    return np.column_stack(columns)


def flip_count(frames: list[pd.DataFrame]) -> np.ndarray:
    """Per row of frames[0]: in how many replicas it flipped."""
    return flipped_matrix(frames).sum(axis=1)


def summary(frames: list[pd.DataFrame], summary_rows: pd.DataFrame) -> pd.DataFrame:
    """The replica columns for every (task, group, metric, filter) row of ``summary_rows`` (replica 0's summary).

    A row's docs are those of its task, group ("all": the whole task) and filter; its flip rates are taken on the
    row's own metric's correctness, which is the logged headline correctness for the headline metric. Non-headline
    metric rows get NaN (their per-doc correctness is not in the paired table)."""
    flipped = flipped_matrix(frames)
    base = frames[0]
    out = []
    for _, row in summary_rows.iterrows():
        mask = (base["task"] == row["task"]).to_numpy() & (base["filter"] == row["filter"]).to_numpy()
        if row["group"] != "all":
            mask &= (base["group"] == row["group"]).to_numpy()
        same_metric = (base.loc[mask, "metric"] == row["metric"]).all() if mask.any() else False
        values = dict.fromkeys(REPLICA_COLUMNS, np.nan)
        values["replicas"] = flipped.shape[1]
        if mask.any() and same_metric:
            sub = flipped[mask]
            rates = sub.mean(axis=0)
            counts = sub.sum(axis=1)
            values.update(flips_rep_min=float(rates.min()), flips_rep_median=float(np.median(rates)),
                          flips_rep_max=float(rates.max()), flips_robust=float(np.mean(counts == sub.shape[1])),
                          flips_unstable=float(np.mean((counts > 0) & (counts < sub.shape[1]))))
        out.append({"task": row["task"], "group": row["group"], "metric": row["metric"], "filter": row["filter"],
                    **values})
    return pd.DataFrame(out, columns=["task", "group", "metric", "filter", *REPLICA_COLUMNS])


def distinguished(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two configurations' flip ranges (min, max over replicas) are distinguished only when they do not overlap."""
    return a[1] < b[0] or b[1] < a[0]
