"""summarize() on multiple-choice tasks: a 5-doc table computed by hand, row layout, diverged rows."""

import numpy as np
import pandas as pd
import pytest

from flipbench.metrics import SUMMARY_COLUMNS, summarize

from .tables import gen_row, log, mc_row, table
from .test_choice import JS_SWAP, KL_SWAP

P_A, P_B, P_C = log(0.5, 0.25, 0.25), log(0.25, 0.5, 0.25), log(0.25, 0.25, 0.5)


def hand_rows(task="mc", group=None):
    """doc | target | pred_b pred_c | correct b c | kl
        0  |   0    |   0      0    |   1   1     | 0          agree
        1  |   0    |   0      1    |   1   0     | KL_SWAP    lost
        2  |   1    |   0      1    |   0   1     | KL_SWAP    gained
        3  |   2    |   0      1    |   0   0     | KL_SWAP    wrong -> other wrong
        4  |   1    |   1      2    |   1   0     | KL_SWAP    lost
    """
    return [mc_row(0, 0, P_A, P_A, task=task, group=group), mc_row(1, 0, P_A, P_B, task=task, group=group),
            mc_row(2, 1, P_A, P_B, task=task, group=group), mc_row(3, 2, P_A, P_B, task=task, group=group),
            mc_row(4, 1, P_B, P_C, task=task, group=group)]


HAND = {
    "n": 5, "acc_base": 0.6, "acc_comp": 0.4, "delta_acc": -0.2,
    "lost": 0.4, "gained": 0.2, "flips": 0.6,
    "label_loyalty": 0.2, "all_flips": 0.8,
    "prob_loyalty": 1 - 0.8 * JS_SWAP,        # js = [0, s, s, s, s] (doc 4 is a permutation of the pair)
    "kl_mean": 0.8 * KL_SWAP, "kl_median": KL_SWAP, "kl_p90": KL_SWAP, "kl_p99": KL_SWAP, "kl_max": KL_SWAP,
    # p_o = .2; pred_b marginals {0: .8, 1: .2}, pred_c {0: .2, 1: .6, 2: .2}; p_e = .28
    "kappa": (0.2 - 0.28) / 0.72,
    "mcnemar_p": 1.0,                          # binomtest(2, 3): every outcome is as likely as the observed
    "n_kl": 5, "n_nonfinite": 0,
}


@pytest.fixture(scope="module")
def hand_summary():
    return summarize(table(hand_rows()), n_resamples=500)


@pytest.mark.parametrize("column", sorted(HAND))
def test_hand_computed_values(hand_summary, column):
    assert len(hand_summary) == 1
    assert hand_summary[column].iloc[0] == pytest.approx(HAND[column], abs=1e-9)


def test_labels_and_scope(hand_summary):
    row = hand_summary.iloc[0]
    labels = ["task", "group", "metric", "filter", "headline"]
    assert row[labels].tolist() == ["mc", "all", "acc", "none", True]
    assert row["kl_scope"] == "choice" and row["kl_unit"] == "KL(base||comp), nats"
    assert list(hand_summary.columns[:len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert row[["answer_agreement", "invalid_base", "flips_to_invalid", "same_top"]].isna().all()


@pytest.mark.parametrize("name, point", [("flips", 0.6), ("delta_acc", -0.2), ("label_loyalty", 0.2),
                                         ("kl_mean", 0.8 * KL_SWAP)])
def test_intervals_bracket_the_estimate(hand_summary, name, point):
    low, high = hand_summary[f"{name}_ci_low"].iloc[0], hand_summary[f"{name}_ci_high"].iloc[0]
    assert low <= point <= high and low < high


def test_margin_columns(hand_summary):
    # every doc's base margin is .25 -> bin (0.1, 0.25]; 3 of 5 flip
    assert hand_summary["flip_rate_margin_0.1_0.25"].iloc[0] == pytest.approx(0.6)
    assert np.isnan(hand_summary["flip_rate_margin_0_0.1"].iloc[0])


def test_group_and_headline_layout():
    samples = table(hand_rows("mmlu", "biology") + [mc_row(9, 0, P_A, P_A, task="mmlu", group="algebra")]
                    + hand_rows("arc"))
    out = summarize(samples, metrics_by_task={"mmlu": ["acc", "acc_norm"], "arc": ["acc_norm", "acc"]},
                    n_resamples=20)
    layout = list(zip(out["task"], out["group"], out["metric"], out["headline"]))
    assert layout == [
        ("mmlu", "all", "acc", True), ("mmlu", "all", "acc_norm", False),
        ("mmlu", "algebra", "acc", True), ("mmlu", "algebra", "acc_norm", False),
        ("mmlu", "biology", "acc", True), ("mmlu", "biology", "acc_norm", False),
        ("arc", "all", "acc_norm", True), ("arc", "all", "acc", False),
    ]
    assert out[out["headline"] & (out["group"] == "all")]["task"].tolist() == ["mmlu", "arc"]
    by = out.set_index(["task", "group", "metric"])
    assert by.loc[("mmlu", "all", "acc"), "n"] == 6 and by.loc[("mmlu", "algebra", "acc"), "n"] == 1
    assert by.loc[("mmlu", "biology", "acc"), "flips"] == pytest.approx(0.6)
    assert by.loc[("mmlu", "all", "acc"), "flips"] == pytest.approx(3 / 6)


def test_acc_and_acc_norm_reported_separately():
    # acc: both pick 0 (wrong); acc_norm: base [-2, -1] -> 1 (right), comp [-2, -2.17] -> 0: one lost doc
    samples = table([mc_row(0, 1, [-4.0, -6.0], [-4.0, -13.0], choice_len=[2, 6], metric="acc_norm")])
    out = summarize(samples, metrics_by_task={"mc": ["acc_norm", "acc"]}, n_resamples=10).set_index("metric")
    assert out.loc["acc_norm", ["acc_base", "acc_comp", "lost", "flips"]].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert out.loc["acc", ["acc_base", "acc_comp", "flips", "label_loyalty"]].tolist() == [0.0, 0.0, 0.0, 1.0]
    default = summarize(samples, n_resamples=10)  # the rows' own `metric` is the only one by default
    assert default["metric"].tolist() == ["acc_norm"]


def test_diverged_rows_are_summarized():
    diverged = [mc_row(5, 0, P_A, [np.nan, 0.0, 0.0]), mc_row(6, 1, P_A, [np.inf, 0.0, -np.inf]),
                mc_row(7, 1, [np.nan] * 3, [np.nan] * 3)]
    out = summarize(table(hand_rows() + diverged), n_resamples=50).iloc[0]
    assert out["n"] == 8 and out["n_nonfinite"] == 3 and out["n_kl"] == 5
    assert out["kl_mean"] == pytest.approx(HAND["kl_mean"]) and out["kl_max"] == pytest.approx(KL_SWAP)
    assert np.isfinite(out[["acc_base", "acc_comp", "flips", "kappa", "flips_ci_low", "kl_mean_ci_high"]]
                       .astype(float)).all()
    # NaN ll predicts index 0 (np.argmax): docs 5 right->right, 6 wrong->wrong, 7 wrong->wrong
    assert out["acc_base"] == pytest.approx(4 / 8) and out["flips"] == pytest.approx(3 / 8)


def test_all_kl_non_finite_gives_nan_stats_without_crash():
    out = summarize(table([mc_row(0, 0, [np.nan, 0.0], [0.0, np.nan])]), n_resamples=20).iloc[0]
    assert out[["kl_mean", "kl_p99", "kl_mean_ci_low", "prob_loyalty"]].isna().all() and out["n_kl"] == 0


def test_identical_sides():
    rows = hand_rows()
    for row in rows:
        row["ll_comp"] = row["ll_base"]
    out = summarize(table(rows), n_resamples=50).iloc[0]
    assert out[["flips", "lost", "gained", "delta_acc", "kl_max", "all_flips"]].tolist() == [0, 0, 0, 0, 0, 0]
    assert out["label_loyalty"] == 1 and out["kappa"] == 1 and out["prob_loyalty"] == pytest.approx(1)
    # 0 flips in 5 docs: the exact interval is [0, 1 - 0.025^(1/5)], not the bootstrap's [0, 0]
    assert out["flips_ci_low"] == 0 and out["flips_ci_high"] == pytest.approx(1 - 0.025 ** (1 / 5), abs=1e-9)


def test_empty_and_invalid_inputs():
    assert list(summarize(table([])).columns) == SUMMARY_COLUMNS
    with pytest.raises(ValueError, match="output_type"):
        summarize(table([mc_row(0, 0, P_A, P_A, task="t"), gen_row(1, "1", "1", "1", task="t")]))
    with pytest.raises(ValueError, match="cannot report"):
        summarize(table(hand_rows()), metrics_by_task={"mc": ["exact_match"]})
    with pytest.raises(ValueError, match="reserved"):
        summarize(table(hand_rows(group="all") + [mc_row(9, 0, P_A, P_A, group="x")]))
    mixed = table(hand_rows())
    mixed.loc[0, "metric"] = "acc_norm"
    with pytest.raises(ValueError, match="metrics_by_task"):
        summarize(mixed)


def test_summary_is_deterministic_and_ignores_row_order():
    samples = table(hand_rows() + [mc_row(i, i % 3, P_B, P_A) for i in range(5, 40)])
    first = summarize(samples, n_resamples=200, seed=3)
    pd.testing.assert_frame_equal(first, summarize(samples, n_resamples=200, seed=3))
    shuffled = summarize(samples.sample(frac=1, random_state=0), n_resamples=200, seed=3)
    point = ["n", "acc_base", "flips", "kappa", "kl_mean", "kl_p99", "mcnemar_p"]
    pd.testing.assert_frame_equal(first[point], shuffled[point])
