"""Exact binomial intervals, Tango's paired interval, Holm / Benjamini-Hochberg adjustment and the Spearman
interval, against hand-worked or independently computed values."""

import math

import numpy as np
import pytest

from flipbench.config import GateConfig
from flipbench.gate import evaluate_gate
from flipbench.metrics import summarize
from flipbench.stats import benjamini_hochberg, clopper_pearson, holm, mean_and_se, spearman_interval, tango_interval

from .tables import mc_row, table


@pytest.mark.parametrize("k, n, low, high", [
    (0, 100, 0.0, 1 - 0.025 ** (1 / 100)),  # 0.0362: closed form at k = 0
    (100, 100, 0.025 ** (1 / 100), 1.0),
    (1, 100, 0.000253146, 0.0544594),  # beta quantiles B(.025; 1, 100), B(.975; 2, 99)
    (0, 1, 0.0, 0.975),
    (5, 10, 0.187086, 0.812914),
])
def test_clopper_pearson(k, n, low, high):
    got = clopper_pearson(k, n)
    assert got == pytest.approx((low, high), abs=2e-7)


def test_clopper_pearson_empty_and_bad():
    assert all(math.isnan(v) for v in clopper_pearson(0, 0))
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


NAN = float("nan")


@pytest.mark.parametrize("p, expected", [
    # sorted .01, .03, .04 (m = 3): 3 * .01 = .03; 2 * .03 = .06; max(.06, 1 * .04) = .06
    ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),
    ([0.01, NAN, 0.04, 0.03], [0.03, NAN, 0.06, 0.06]),  # NaN is not in the family
    ([0.5, 0.6], [1.0, 1.0]),  # clipped at 1
    ([], []),
    # statsmodels 0.14 multipletests([.01, .04, .03, .2], method="holm")[1]
    ([0.01, 0.04, 0.03, 0.2], [0.04, 0.09, 0.09, 0.2]),
])
def test_holm(p, expected):
    assert np.allclose(holm(p), expected, equal_nan=True)


@pytest.mark.parametrize("p, expected", [
    # sorted .01, .03, .04, m = 3: q = min over j >= i of m p_(j) / j -> .03, .06 -> min(.045, .04) = .04, .04
    ([0.01, 0.04, 0.03], [0.03, 0.04, 0.04]),
    ([0.01, NAN, 0.04, 0.03], [0.03, NAN, 0.04, 0.04]),
    ([NAN], [NAN]),
])
def test_benjamini_hochberg(p, expected):
    assert np.allclose(benjamini_hochberg(p), expected, equal_nan=True)


def test_mean_and_se_as_llama_cpp():
    # x = 1, 2, 3, 4: <x> = 2.5, <x²> = 7.5, pvar = 1.25, SE = sqrt(1.25 / 3)
    assert mean_and_se([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(1.25 / 3)))
    assert math.isnan(mean_and_se([7.0])[1]) and all(math.isnan(v) for v in mean_and_se([]))


def test_spearman_interval_fisher_z():
    # ranks x 1..5, y 2 1 4 3 5: d² = 1+1+1+1+0 = 4, rho = 1 - 6*4/(5*24) = 0.8
    rho, low, high, p = spearman_interval([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    half = 1.959964 * math.sqrt((1 + 0.8 ** 2 / 2) / 2)
    assert rho == pytest.approx(0.8)
    assert (low, high) == pytest.approx((math.tanh(math.atanh(0.8) - half), math.tanh(math.atanh(0.8) + half)), abs=1e-6)
    assert all(math.isnan(v) for v in spearman_interval([1, 2], [1, 2]))  # too few members
    # p: exact permutation test; rho = 1 - 6 Σd² / 120 >= 0.8 means Σd² <= 4, which 8 of the 5! = 120 orderings
    # reach (Σd² = 0: one, 2: four, 4: three); two-sided = 2 * 8/120
    assert p == pytest.approx(16 / 120)
    rho, low, high, p = spearman_interval([1, 2, 3, 4], [1, 2, 3, 5])  # perfect: no finite Fisher z interval
    assert rho == pytest.approx(1.0) and math.isnan(low) and math.isnan(high)
    assert p == pytest.approx(2 / 24)  # only the identity ordering reaches rho = 1: one-sided 1/24, doubled


def test_summary_adjusts_mcnemar_within_a_tasks_subjects_and_across_tasks():
    from flipbench.metrics import summarize

    from .tables import mc_row, table

    right, wrong = [0.0, -1.0], [-1.0, 0.0]  # argmax 0 (the target) / argmax 1
    rows = [mc_row(i, 0, right, wrong, task="t", group="a") for i in range(5)]  # subject a: 5 lost, 0 gained
    rows += [mc_row(5 + i, 0, right, right, task="t", group="b") for i in range(3)]  # subject b: no change
    rows += [mc_row(i, 0, right, right, task="u") for i in range(4)]  # task u: no change
    out = summarize(table(rows), n_resamples=0).set_index(["task", "group"])
    # subject a: exact two-sided p = 2 / 2^5 = 0.0625; b: 1. Holm over {a, b}: 2 * 0.0625 = 0.125; BH: 0.125, 1
    assert out.loc[("t", "a"), "mcnemar_p"] == pytest.approx(0.0625)
    assert out.loc[("t", "a"), ["mcnemar_p_holm", "mcnemar_q_bh"]].tolist() == pytest.approx([0.125, 0.125])
    assert out.loc[("t", "b"), ["mcnemar_p_holm", "mcnemar_q_bh"]].tolist() == pytest.approx([1.0, 1.0])
    # whole tasks t (p 0.0625) and u (p 1) form the headline family: Holm 0.125 and 1
    assert out.loc[("t", "all"), "mcnemar_p_holm"] == pytest.approx(0.125)
    assert out.loc[("u", "all"), "mcnemar_p_holm"] == pytest.approx(1.0)


# Tango's score interval, reference values from an independent implementation: the nuisance p21 profiled by
# numerical maximisation of the constrained likelihood (scipy.optimize.minimize_scalar), the score statistic
# (b - c - nΔ) / sqrt(n (2 p21 + Δ(1 - Δ))) solved for |Z| = 1.959964 with brentq; agrees to 1e-8.
@pytest.mark.parametrize("b, c, n, low, high", [
    (0, 0, 20, -0.16112516, 0.16112516),  # closed form at b = c = 0: ±z² / (n + z²) = ±3.8415 / 23.8415
    (0, 1, 10, -0.40415004, 0.20528608),  # 1 lost in 10 docs
    (3, 7, 40, -0.26416051, 0.06183754),
    (12, 5, 200, -0.00600252, 0.08065566),
])
def test_tango_interval(b, c, n, low, high):
    assert tango_interval(b, c, n) == pytest.approx((low, high), abs=2e-8)


def test_tango_interval_edges():
    assert tango_interval(10, 0, 10)[1] == 1.0 and tango_interval(0, 10, 10)[0] == -1.0
    assert all(math.isnan(v) for v in tango_interval(0, 0, 0))
    with pytest.raises(ValueError):
        tango_interval(6, 5, 10)


def _docs(lost: int, n: int):
    """n MC docs, the first ``lost`` of them right on the baseline and wrong on the compressed side."""
    return table([mc_row(i, 0, [0.0, -1.0], [-1.0, 0.0] if i < lost else [0.0, -1.0]) for i in range(n)])


@pytest.mark.parametrize("lost, n, low, high", [(0, 20, -0.16112516, 0.16112516), (1, 10, -0.40415004, 0.20528608)])
def test_delta_acc_interval_is_tango_and_upper_ci_gate_is_not_fooled(lost, n, low, high):
    """Issue 23, case 2: the percentile bootstrap gave [0, 0] for 0 changed answers in 20 docs (so max_acc_drop=0
    passed 'with 95% confidence') and a drop bound near 0.30 for 1 lost in 10."""
    row = summarize(_docs(lost, n), n_resamples=200).iloc[0]
    assert (row["delta_acc_ci_low"], row["delta_acc_ci_high"]) == pytest.approx((low, high), abs=2e-8)
    verdict = evaluate_gate(summarize(_docs(lost, n), n_resamples=200), GateConfig(max_acc_drop=0.0, on="upper_ci"))
    assert verdict["verdict"] == "FAIL" and verdict["tasks"][0]["checks"][0]["value"] == pytest.approx(-low)
