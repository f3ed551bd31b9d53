"""Pair the baseline's and the compressed model's per-sample frames, refusing to compare unlike prompts."""

from __future__ import annotations

import pandas as pd

PAIR_KEY = ["task", "group", "doc_id", "filter"]
SHARED = ["category", "output_type", "metric", "doc_hash", "prompt_hash", "prompt", "target", "choices", "choice_len"]
SIDED = ["ll", "ll_uncond", "pred", "correct", "lm_correct", "response"]
# Sided columns a side may lack (no suite.think_end, or collected before they existed): NaN when missing
OPTIONAL_SIDED = ["think_len", "think_closed", "think_cut"]


class PairingError(ValueError):
    """The two sides did not evaluate the same documents with the same prompts."""


def pair(base: pd.DataFrame, comp: pd.DataFrame) -> pd.DataFrame:
    """Join on (task, group, doc_id, filter); every doc must be on both sides with identical doc and prompt hashes."""
    for name, frame in (("baseline", base), ("compressed", comp)):
        dupes = frame.duplicated(PAIR_KEY)
        if dupes.any():
            raise PairingError(f"{name} has duplicate rows for {frame.loc[dupes, PAIR_KEY].iloc[0].to_dict()}")
    base, comp = (frame.assign(**{c: float("nan") for c in OPTIONAL_SIDED if c not in frame}) for frame in (base, comp))
    # An outer merge sorts its keys; keep the baseline's row order (filters in the task's own order).
    merged = base.assign(_order=range(len(base))).merge(comp, on=PAIR_KEY, how="outer", suffixes=("_base", "_comp"),
                                                         indicator=True)
    unpaired = merged[merged["_merge"] != "both"]
    if len(unpaired):
        first = unpaired.iloc[0]
        side = "baseline" if first["_merge"] == "left_only" else "compressed model"
        raise PairingError(f"{len(unpaired)} docs were evaluated on one side only, e.g. {first['task']} doc {first['doc_id']} "
                           f"only by the {side}; evaluate both sides with the same tasks and limit")
    for column in ("doc_hash", "prompt_hash"):
        bad = merged[merged[f"{column}_base"] != merged[f"{column}_comp"]]
        if len(bad):
            row = bad.iloc[0]
            raise PairingError(f"{column} differs for {row['task']} doc {row['doc_id']} ({len(bad)} docs); "
                               "the two sides saw different documents or prompts and cannot be compared")
    merged = merged.sort_values("_order", kind="stable")
    out = merged[PAIR_KEY].copy()
    for column in SHARED:
        out[column] = merged[f"{column}_base"]
    for column in SIDED + OPTIONAL_SIDED:
        out[f"{column}_base"] = merged[f"{column}_base"]
        out[f"{column}_comp"] = merged[f"{column}_comp"]
    return out.reset_index(drop=True)
