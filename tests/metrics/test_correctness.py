"""What counts as correct, and what counts as diverged (issue 23, cases 1 and 5).

The headline metric is read strictly from lm-eval's logged sample (a missing or misspelt one is an error, never
0); a continuous metric is binary only through an explicit ``suite.correct_if`` rule; a non-finite log-prob on
either side counts for every task type.
"""

import json
import math

import numpy as np
import pytest

from flipbench import evaluate, scoring
from flipbench.metrics import flip_rate_by_margin, summarize

from .tables import gen_row, mc_row, table


def gen_sample(**metrics):
    return {"doc_id": 0, "doc": {}, "target": "7", "arguments": [("Q: 3 + 4?", {})], "resps": [["7"]],
            "filtered_resps": ["7"], "filter": "strict-match", "metrics": list(metrics), **metrics}


def test_a_misspelt_metric_is_an_error_not_zero():
    """Before: `+suite.metrics.synth_gsm8k=[exact_matc]` scored every doc 0 on both sides and the gate passed."""
    sample = gen_sample(exact_match=1.0)
    with pytest.raises(scoring.MetricError, match="'exact_matc' is not a metric of synth_gsm8k; it has exact_match"):
        evaluate.headline_metric("synth_gsm8k", sample, {"synth_gsm8k": ["exact_matc"]})
    with pytest.raises(scoring.MetricError, match="missing from lm-eval's logged sample"):
        evaluate._gen_row(sample, "exact_matc")
    assert evaluate._gen_row(sample, "exact_match")["correct"] == 1


@pytest.mark.parametrize("value, rule, correct", [(0.6, None, None), (0.6, (">=", 0.5), 1), (0.4, (">=", 0.5), 0),
                                                  (0.1, ("<=", 0.25), 1), (1.0, None, 1), (0.0, None, 0)])
def test_continuous_values_need_a_rule(value, rule, correct):
    """Before: F1 = 0.6 became correct by `> 0`; a Brier score of 0.9 (bad) too."""
    sample = gen_sample(f1=value)
    if correct is None:
        with pytest.raises(scoring.MetricError, match="not 0/1 per doc.*suite.correct_if"):
            evaluate._gen_row(sample, "f1", rule)
    else:
        assert evaluate._gen_row(sample, "f1", rule)["correct"] == correct


def test_summary_applies_correct_if_to_the_logged_values():
    """F1 logged per doc; '>=0.5' counts docs 0 and 1 right on the baseline, doc 0 only on the compressed side."""
    rows = []
    for i, (f1_b, f1_c) in enumerate([(0.9, 0.8), (0.5, 0.2), (0.1, 0.3)]):
        row = gen_row(i, "x", "x", "y")
        row["lm_correct_base"], row["lm_correct_comp"] = json.dumps({"f1": f1_b}), json.dumps({"f1": f1_c})
        row["metric"] = "f1"
        rows.append(row)
    out = summarize(table(rows), n_resamples=0, correct_if={"gen": ">=0.5"}).iloc[0]
    assert (out["acc_base"], out["acc_comp"], out["lost"], out["gained"]) == pytest.approx((2 / 3, 1 / 3, 1 / 3, 0))


def test_a_lower_is_better_mc_metric_follows_its_rule():
    """brier_score (lower is better) on MC rows: '<=0.25' makes 0.1 right and 0.6 wrong; without a rule the
    continuous values are refused instead of being read as `> 0` (always 'right')."""
    rows = [mc_row(0, 0, [0.0, -1.0], [0.0, -1.0], metric="brier_score", lm_correct=({"brier_score": 0.1},
                                                                                      {"brier_score": 0.6}))]
    out = summarize(table(rows), n_resamples=0, correct_if={"mc": "<=0.25"}).iloc[0]
    assert (out["acc_base"], out["acc_comp"], out["lost"]) == (1.0, 0.0, 1.0)
    by_margin = flip_rate_by_margin(table(rows), correct_if={"mc": "<=0.25"})
    assert by_margin["flips"].sum() == 1
    with pytest.raises(scoring.MetricError, match="'brier_score' is not 0/1"):
        summarize(table(rows), n_resamples=0)


def test_non_finite_log_probs_count_for_every_task_type():
    """Before: generative rows counted only a non-finite KL, and a diverged token log-prob on the baseline side
    or an infinite unconditional ll went unseen."""
    rows = [mc_row(0, 0, [0.0, -1.0], [0.0, -math.inf]), mc_row(1, 0, [0.0, -1.0], [0.0, -1.0]),
            mc_row(2, 0, [0.0, -1.0], [0.0, -1.0], ll_uncond=[math.nan, 0.0])]
    gen = [gen_row(0, "7", "7", "7", tokens={"tok_kl": [0.1, 0.2], "tok_logp_base": [-0.1, -math.inf],
                                                "tok_logp_comp": [-0.1, -0.2], "tok_same_top": [1.0, 1.0]}),
           gen_row(1, "7", "7", "7", tokens={"tok_kl": [0.1], "tok_logp_base": [-0.1], "tok_logp_comp": [-0.1],
                                                "tok_same_top": [1.0]})]
    out = summarize(table(rows + gen), n_resamples=0).set_index("task")
    assert out.loc["mc", "n_nonfinite"] == 2 and out.loc["gen", "n_nonfinite"] == 1
    assert np.isfinite(out.loc["gen", "kl_mean"])  # the statistics keep using the finite values
