"""Scoring of MC rows: lm-eval's logged correctness wins, recomputed predictions are checked against it, and
p / margin / KL come from the normalised scores the metric predicts with. Numbers worked out by hand:
two choices with scores (a, b) give p_top = 1 / (1 + e^-|a-b|) and margin = tanh(|a-b| / 2)."""

import numpy as np
import pytest

from flipbench import scoring
from flipbench.metrics import annotate, flip_rate_by_margin, predictions, summarize

from .tables import mc_row, table

E = np.e


@pytest.mark.parametrize("metric, row, pred, p_base, margin, kl", [
    # acc: scores = ll = (-4, -6): p = (σ(2), σ(-2)), margin tanh(1); comp (-4, -13): q = (σ(9), σ(-9))
    ("acc", mc_row(0, 1, [-4.0, -6.0], [-4.0, -13.0], choice_len=[2, 6]),
     0, [0.880797, 0.119203], 0.761594, 0.707616),
    # acc_norm: scores = ll / characters = (-2, -1): p = (σ(-1), σ(1)), margin tanh(0.5);
    # comp (-2, -13/6): q = (σ(1/6), σ(-1/6)); KL = σ(-1) ln(σ(-1)/σ(1/6)) + σ(1) ln(σ(1)/σ(-1/6)) = 0.152922
    ("acc_norm", mc_row(0, 1, [-4.0, -6.0], [-4.0, -13.0], choice_len=[2, 6]),
     1, [0.268941, 0.731059], 0.462117, 0.152922),
    # acc_bytes: "é" is 1 character but 2 bytes; ll (-2, -3) / bytes (2, 2) = (-1, -1.5) -> pred 0 (acc_norm would
    # pick 1: (-2, -1.5)); comp (-3, -2) / 2 = swapped scores: KL = (p1 - p2) ln(p1/p2) = tanh(0.25) * 0.5
    ("acc_bytes", mc_row(0, 0, [-2.0, -3.0], [-3.0, -2.0], choice_len=[1, 2], choices=["é", "ab"]),
     0, [0.622459, 0.377541], 0.244919, 0.122459),
    # acc_mutual_info: ll (-1, -2, -3) - unconditional (-0.5, -3, -2.5) = (-0.5, 1, -0.5) -> pred 1;
    # p = (e^-.5, e, e^-.5) / (2 e^-.5 + e); comp: ll equal to the unconditional ones, q uniform: KL = ln 3 - H(p)
    ("acc_mutual_info", mc_row(0, 1, [-1.0, -2.0, -3.0], [-0.5, -3.0, -2.5], ll_uncond=[-0.5, -3.0, -2.5]),
     1, [0.154281, 0.691438, 0.154281], 0.537158, 0.266789),
])
def test_p_margin_and_kl_come_from_the_metric_s_scores(metric, row, pred, p_base, margin, kl):
    samples = table([row])
    out = annotate(samples, metric).iloc[0]
    np.testing.assert_allclose(out["p_base"], p_base, atol=1e-6)
    assert out["margin_base"] == pytest.approx(margin, abs=1e-6)
    assert out["kl"] == pytest.approx(kl, abs=1e-6)
    assert predictions(samples, "base", metric)[0].tolist() == [str(pred)]
    # by default each row is annotated under its own `metric`
    samples["metric"] = metric
    assert annotate(samples).iloc[0]["kl"] == pytest.approx(kl, abs=1e-6)


def test_summary_rows_each_use_their_metric_s_distribution():
    samples = table([mc_row(0, 1, [-4.0, -6.0], [-4.0, -13.0], choice_len=[2, 6], metric="acc_norm")])
    out = summarize(samples, metrics_by_task={"mc": ["acc_norm", "acc"]}, n_resamples=0).set_index("metric")
    assert out.loc["acc_norm", "kl_mean"] == pytest.approx(0.152922, abs=1e-6)
    assert out.loc["acc", "kl_mean"] == pytest.approx(0.707616, abs=1e-6)


def test_margin_bins_follow_the_decision_rule():
    """The issue's acc_norm case: a flip that sits in the confident (0.5, 1] bin under raw ll has an acc_norm
    margin of tanh(0.5) = 0.46 (bin (0.25, 0.5])."""
    samples = table([mc_row(0, 1, [-4.0, -6.0], [-4.0, -13.0], choice_len=[2, 6], metric="acc_norm")])
    out = flip_rate_by_margin(samples, metrics_by_task={"mc": ["acc_norm", "acc"]})
    flipped = out[out["flips"] > 0]
    assert flipped[["metric", "bin"]].values.tolist() == [["acc_norm", "(0.25, 0.5]"]]
    held = out[(out["metric"] == "acc") & (out["n"] > 0)]
    assert held["bin"].tolist() == ["(0.5, 1]"] and held["flips"].tolist() == [0]


@pytest.mark.parametrize("target, logged, metric, correct, mismatch", [
    # several golds: pred 0 is right by the second gold listed
    ("2,0", {"acc": 1.0}, "acc", 1, False),
    ("2,0", None, "acc", 1, False),  # nothing logged: pred ∈ gold
    ("2", None, "acc", 0, False),
    # lm-eval's value wins over the recomputation, and the disagreement is counted
    ("2", {"acc": 1.0}, "acc", 1, True),
    ("0", {"acc": 0.0}, "acc", 0, True),
    # no gold among the choices (lm-eval's -100): never right
    ("", {"acc": 0.0}, "acc", 0, False),
    # a metric without a known decision rule: lm-eval's value, never checked
    ("0", {"exact_match": 0.0, "acc": 1.0}, "exact_match", 0, False),
])
def test_correctness_is_lm_eval_s_and_recomputation_is_checked(target, logged, metric, correct, mismatch):
    row = mc_row(0, target or "0", [-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0],
                 lm_correct=None if logged is None else (logged, logged))
    row["target"] = target
    rows = table([row])
    pred, got, flagged = scoring.mc_predictions(rows, "base", metric)
    assert pred.tolist() == [0] and got.tolist() == [correct] and flagged.tolist() == [mismatch]
    summary = summarize(rows, metrics_by_task={"mc": [metric]}, n_resamples=0).iloc[0]
    assert summary["acc_base"] == correct and summary["n_pred_mismatch"] == 2 * mismatch
    assert scoring.count_mismatches(rows.assign(metric=metric)) == 2 * mismatch


def test_unknown_metric_without_a_logged_value_is_refused():
    with pytest.raises(ValueError, match="exact_match"):
        scoring.mc_predictions(table([mc_row(0, 0, [0.0, -1.0], [0.0, -1.0])]), "base", "exact_match")
    with pytest.raises(ValueError, match="unconditional"):
        scoring.mc_predictions(table([mc_row(0, 0, [0.0, -1.0], [0.0, -1.0])]), "base", "acc_mutual_info")


@pytest.mark.parametrize("target, gold", [("2", [2]), ("0,3", [0, 3]), ("", []), (" 1 ", [1])])
def test_gold_indices(target, gold):
    assert scoring.gold_indices(target) == gold
    assert scoring.gold_indices(scoring.format_gold(gold)) == gold


def test_category_rows_pool_their_groups():
    rows = [mc_row(i, 0, [0.0, -1.0], [-1.0, 0.0] if i < 2 else [0.0, -1.0], group=g, category=c)
            for i, (g, c) in enumerate([("algebra", "stem"), ("physics", "stem"), ("law", "humanities"),
                                        ("ethics", "humanities")])]
    out = summarize(table(rows), n_resamples=0)
    assert out[["group", "level", "n", "flips"]].values.tolist() == [
        ["all", "task", 4, 0.5], ["humanities", "category", 2, 0.0], ["stem", "category", 2, 1.0],
        ["algebra", "group", 1, 1.0], ["ethics", "group", 1, 0.0], ["law", "group", 1, 0.0], ["physics", "group", 1, 1.0]]
    rows[0]["group"] = "stem"
    with pytest.raises(ValueError, match="both a category and a group"):
        summarize(table(rows), n_resamples=0)
