"""Scoring of MC rows: lm-eval's logged correctness wins, recomputed predictions are checked against it, and
p / margin / KL come from the normalised scores the metric predicts with. Numbers worked out by hand:
two choices with scores (a, b) give p_top = 1 / (1 + e^-|a-b|) and margin = tanh(|a-b| / 2)."""

import numpy as np
import pytest

from flipbench import scoring
from flipbench.metrics import annotate, flip_rate_by_margin, predictions, summarize

from .tables import mc_row, table

E = np.e


# Choice KL and p have one scale for every metric: softmax of the raw log-likelihoods. The margin and kl_norm
# come from the scores the metric's prediction uses.
@pytest.mark.parametrize("metric, row, pred, p_base, margin, kl, kl_norm", [
    # acc: scores = ll = (-4, -6): p = (σ(2), σ(-2)), margin tanh(1); comp (-4, -13): q = (σ(9), σ(-9));
    # KL = σ(2) ln(σ(2)/σ(9)) + σ(-2) ln(σ(-2)/σ(-9)) = 0.707616
    ("acc", mc_row(0, 1, [-4.0, -6.0], [-4.0, -13.0], choice_len=[2, 6]),
     0, [0.880797, 0.119203], 0.761594, 0.707616, 0.707616),
    # acc_norm: the same ll, so the same p and KL; scores ll / characters = (-2, -1): margin tanh(0.5);
    # comp (-2, -13/6): kl_norm = σ(-1) ln(σ(-1)/σ(1/6)) + σ(1) ln(σ(1)/σ(-1/6)) = 0.152922
    ("acc_norm", mc_row(0, 1, [-4.0, -6.0], [-4.0, -13.0], choice_len=[2, 6]),
     1, [0.880797, 0.119203], 0.462117, 0.707616, 0.152922),
    # acc_bytes: "é" is 1 character but 2 bytes; ll (-2, -3) / bytes (2, 2) = (-1, -1.5) -> pred 0 (acc_norm would
    # pick 1: (-2, -1.5)); raw p = (σ(1), σ(-1)); comp ll swapped: KL = (p1 - p2) ln(p1/p2) = tanh(0.5) * 1;
    # on the scores (-1, -1.5) vs (-1.5, -1): kl_norm = tanh(0.25) * 0.5
    ("acc_bytes", mc_row(0, 0, [-2.0, -3.0], [-3.0, -2.0], choice_len=[1, 2], choices=["é", "ab"]),
     0, [0.731059, 0.268941], 0.244919, 0.462117, 0.122459),
    # acc_mutual_info: ll (-1, -2, -3) - unconditional (-0.5, -3, -2.5) = (-0.5, 1, -0.5) -> pred 1, margin from
    # those scores; raw p = softmax(-1, -2, -3), comp's ll equal to the unconditional ones:
    # KL = Σ p ln(p / softmax(-0.5, -3, -2.5)) = 0.156221 (by hand in floats); kl_norm = ln 3 - H(p_scores)
    ("acc_mutual_info", mc_row(0, 1, [-1.0, -2.0, -3.0], [-0.5, -3.0, -2.5], ll_uncond=[-0.5, -3.0, -2.5]),
     1, [0.665241, 0.244728, 0.090031], 0.537158, 0.156221, 0.266789),
])
def test_p_and_kl_come_from_the_raw_log_likelihoods_margin_from_the_metric(metric, row, pred, p_base, margin, kl,
                                                                          kl_norm):
    samples = table([row])
    out = annotate(samples, metric).iloc[0]
    np.testing.assert_allclose(out["p_base"], p_base, atol=1e-6)
    assert out["margin_base"] == pytest.approx(margin, abs=1e-6)
    assert out["kl"] == pytest.approx(kl, abs=1e-6)
    assert out["kl_norm"] == pytest.approx(kl_norm, abs=1e-6)
    assert predictions(samples, "base", metric)[0].tolist() == [str(pred)]
    # by default each row is annotated under its own `metric`
    samples["metric"] = metric
    assert annotate(samples).iloc[0]["kl_norm"] == pytest.approx(kl_norm, abs=1e-6)


def test_choice_kl_has_one_scale_whatever_the_metric():
    """Issue 23, case 4: the same log-likelihood change used to give 0.0671 nats under acc (MMLU-style rows) and
    0.000139 under acc_norm (ARC-style rows, long choices), so one KL limit never bit on ARC. Now both are the
    KL of softmax(ll): KL between softmax(-1, -3) and softmax(-1.5, -2.5) = 0.067131 (by hand: p = (σ(2), σ(-2)),
    q = (σ(1), σ(-1)), Σ p ln(p/q)); over ll / 22 characters (the old acc_norm scale) the same change gives
    p = (σ(1/11), σ(-1/11)), q = (σ(1/22), σ(-1/22)): 0.000258, 260 times less."""
    rows = [mc_row(i, 0, [-1.0, -3.0], [-1.5, -2.5], choice_len=[22, 22], metric=metric)
            for i, metric in enumerate(["acc", "acc_norm"])]
    out = annotate(table(rows))
    assert out["kl"].tolist() == pytest.approx([0.067131, 0.067131], abs=1e-6)
    assert out["kl_norm"].tolist() == pytest.approx([0.067131, 0.000258], abs=1e-6)


def test_summary_kl_is_raw_with_the_normalised_kl_beside_it():
    samples = table([mc_row(0, 1, [-4.0, -6.0], [-4.0, -13.0], choice_len=[2, 6], metric="acc_norm")])
    out = summarize(samples, metrics_by_task={"mc": ["acc_norm", "acc"]}, n_resamples=0).set_index("metric")
    assert out.loc["acc_norm", "kl_mean"] == pytest.approx(0.707616, abs=1e-6)
    assert out.loc["acc_norm", "kl_norm_mean"] == pytest.approx(0.152922, abs=1e-6)
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
