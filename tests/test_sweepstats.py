"""Sweep members compared on hand-made samples: flip-set overlap (Jaccard), McNemar between members, Spearman."""

import math

import numpy as np
import pandas as pd
import pytest

from flipbench import sweepstats
from flipbench.stats import mcnemar_exact

BASE = [1, 1, 1, 0, 0, 1]


def member(correct_comp, task="t", filter_name="none"):
    return pd.DataFrame({"task": task, "group": task, "doc_id": range(len(correct_comp)), "filter": filter_name,
                         "correct_base": BASE, "correct_comp": correct_comp})


# doc:           0  1  2  3  4  5      flipped docs
A = member([0, 0, 1, 1, 0, 1])  # 0, 1, 3
B = member([0, 1, 1, 1, 1, 1])  # 0, 3, 4
C = member([1, 1, 1, 0, 0, 1])  # none
HEADLINE = pd.DataFrame({"run": ["a", "b", "c"], "task": "t", "filter": "none"})


@pytest.fixture(scope="module")
def pairs():
    return sweepstats.overlap({"a": A, "b": B, "c": C}, HEADLINE).set_index(["member_a", "member_b"])


@pytest.mark.parametrize("pair, column, expected", [
    (("a", "b"), "flips_both", 2), (("a", "b"), "flips_either", 4), (("a", "b"), "jaccard", 0.5),  # {0,3} / {0,1,3,4}
    (("a", "c"), "jaccard", 0.0), (("b", "c"), "flips_both", 0),
    # a vs b on their own answers: a right & b wrong nowhere; a wrong & b right on docs 1, 4
    (("a", "b"), "a_right_b_wrong", 0), (("a", "b"), "a_wrong_b_right", 2), (("a", "b"), "mcnemar_p", 0.5),
    # a vs c: a right & c wrong on doc 3; a wrong & c right on docs 0, 1; exact two-sided p = 2 · 4/8 = 1
    (("a", "c"), "a_right_b_wrong", 1), (("a", "c"), "a_wrong_b_right", 2), (("a", "c"), "mcnemar_p", 1.0),
])
def test_pairwise_overlap_by_hand(pairs, pair, column, expected):
    assert pairs.loc[pair, column] == pytest.approx(expected)


def test_jaccard_of_nothing_flipped_is_undefined():
    assert math.isnan(sweepstats.jaccard(set(), set()))
    assert sweepstats.jaccard({1}, {1}) == 1.0
    assert mcnemar_exact(0, 2) == 0.5


def test_jaccard_matrix_is_symmetric_with_unit_diagonal(pairs):
    matrix = sweepstats.jaccard_matrix(pairs.reset_index(), "t")
    assert list(matrix.index) == ["a", "b", "c"]
    assert matrix.loc["a", "b"] == matrix.loc["b", "a"] == 0.5
    assert matrix.loc["a", "a"] == 1.0 and math.isnan(matrix.loc["c", "c"])  # c flips nothing


def test_other_filters_and_tasks_are_kept_apart():
    other = pd.concat([A, member([1] * 6, filter_name="flexible-extract")], ignore_index=True)
    docs = sweepstats.headline_docs(other, "t", "none")
    assert len(docs) == 6 and docs["correct_comp"].tolist() == [0, 0, 1, 1, 0, 1]


def test_spearman_across_members():
    table = pd.DataFrame({"task": "t", "kl_mean": [0.1, 0.2, 0.3, 0.4, 0.5], "flips": [0.02, 0.01, 0.04, 0.03, 0.05]})
    row = sweepstats.kl_flips_correlation(table).iloc[0]
    assert row["members"] == 5 and row["spearman_kl_flips"] == pytest.approx(0.8)
    assert row["spearman_ci_low"] < 0.8 < row["spearman_ci_high"]
    few = sweepstats.kl_flips_correlation(table.iloc[:2]).iloc[0]
    assert np.isnan(few[["spearman_kl_flips", "spearman_ci_low"]].astype(float)).all()
