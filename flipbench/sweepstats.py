"""Across the members of a sweep: do they flip the same docs, do they differ, does KL rank them like flips?

Pure functions of the members' paired samples (``samples.parquet``) and headline summary rows. A doc flips
under a member when its headline correctness (the stored ``correct_base`` / ``correct_comp`` on the task's
headline filter) differs between baseline and member; every member shares the one cached baseline.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from flipbench.stats import holm, mcnemar_exact, spearman_interval

DOC = ["group", "doc_id"]
OVERLAP_COLUMNS = ["task", "member_a", "member_b", "n", "flips_a", "flips_b", "flips_both", "flips_either", "jaccard",
                   "a_right_b_wrong", "a_wrong_b_right", "mcnemar_p", "mcnemar_p_holm"]
CORRELATION_COLUMNS = ["task", "members", "spearman_kl_flips", "spearman_ci_low", "spearman_ci_high", "spearman_p"]


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|; NaN when both are empty (nothing flipped: no overlap to measure)."""
    union = len(a | b)
    return len(a & b) / union if union else np.nan


def headline_docs(samples: pd.DataFrame, task: str, filter_name: str) -> pd.DataFrame:
    """(group, doc_id) -> correct_base, correct_comp of one task's headline filter, one row per doc."""
    rows = samples[(samples["task"] == task) & (samples["filter"].astype(str) == str(filter_name))]
    return rows.drop_duplicates(DOC).set_index(DOC)[["correct_base", "correct_comp"]].astype(int)


def _flipped(docs: pd.DataFrame) -> set:
    return set(docs.index[docs["correct_base"] != docs["correct_comp"]])


def pair_overlap(task: str, name_a: str, docs_a: pd.DataFrame, name_b: str, docs_b: pd.DataFrame) -> dict:
    """One row of OVERLAP_COLUMNS for two members on the docs both evaluated.

    McNemar between members compares their own correctness: a right and b wrong against a wrong and b right.
    """
    shared = docs_a.index.intersection(docs_b.index)
    a, b = docs_a.loc[shared], docs_b.loc[shared]
    flips_a, flips_b = _flipped(a), _flipped(b)
    a_only = int(((a["correct_comp"] == 1) & (b["correct_comp"] == 0)).sum())
    b_only = int(((a["correct_comp"] == 0) & (b["correct_comp"] == 1)).sum())
    return {"task": task, "member_a": name_a, "member_b": name_b, "n": len(shared), "flips_a": len(flips_a),
            "flips_b": len(flips_b), "flips_both": len(flips_a & flips_b), "flips_either": len(flips_a | flips_b),
            "jaccard": jaccard(flips_a, flips_b), "a_right_b_wrong": a_only, "a_wrong_b_right": b_only,
            "mcnemar_p": mcnemar_exact(a_only, b_only)}


def overlap(members: dict[str, pd.DataFrame], headline: pd.DataFrame) -> pd.DataFrame:
    """Every pair of members, per task: flip-set overlap and McNemar, its p-values Holm-adjusted over the task's
    pairs (``mcnemar_p_holm``: k members make k(k-1)/2 comparisons, and the smallest raw p-value among them is no
    evidence by itself). ``members`` maps a member's name to its samples; ``headline`` has one row per (member
    ``run``, task) with the headline ``filter``."""
    records = []
    for task, rows in headline.groupby("task", sort=True):
        docs = {run: headline_docs(members[run], task, f) for run, f in zip(rows["run"], rows["filter"]) if run in members}
        for name_a, name_b in combinations(sorted(docs), 2):
            records.append(pair_overlap(task, name_a, docs[name_a], name_b, docs[name_b]))
    pairs = pd.DataFrame.from_records(records, columns=OVERLAP_COLUMNS)
    for _, rows in pairs.groupby("task", sort=False):
        pairs.loc[rows.index, "mcnemar_p_holm"] = holm(rows["mcnemar_p"].to_numpy(dtype=float))
    return pairs


def jaccard_matrix(pairs: pd.DataFrame, task: str) -> pd.DataFrame:
    """Square member × member Jaccard table of one task (1 on the diagonal, where a member has flips)."""
    rows = pairs[pairs["task"] == task]
    names = sorted(set(rows["member_a"]) | set(rows["member_b"]))
    matrix = pd.DataFrame(np.nan, index=names, columns=names)
    for _, r in rows.iterrows():
        matrix.loc[r["member_a"], r["member_b"]] = matrix.loc[r["member_b"], r["member_a"]] = r["jaccard"]
    for _, r in rows.iterrows():
        for name, flips in ((r["member_a"], r["flips_a"]), (r["member_b"], r["flips_b"])):
            matrix.loc[name, name] = 1.0 if flips else np.nan
    return matrix


def kl_flips_correlation(table: pd.DataFrame) -> pd.DataFrame:
    """Per task, Spearman's rho between the members' kl_mean and flips, with its 95% Fisher-z interval."""
    records = []
    for task, rows in table.groupby("task", sort=True):
        rho, low, high, p = spearman_interval(rows["kl_mean"], rows["flips"])
        records.append({"task": task, "members": len(rows), "spearman_kl_flips": rho, "spearman_ci_low": low,
                        "spearman_ci_high": high, "spearman_p": p})
    return pd.DataFrame.from_records(records, columns=CORRELATION_COLUMNS)
