"""flipbench.stats: paired bootstrap, exact McNemar, Cohen's kappa (hand-computed values)."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from flipbench.stats import cohen_kappa, mcnemar_exact, paired_bootstrap

MEAN = {"mean": lambda s: s["x"].mean(axis=-1)}


@pytest.mark.parametrize("lost, gained, expected", [
    (0, 0, 1.0),                 # no discordant doc: nothing to test
    (5, 0, 2 * 0.5 ** 5),        # 0.0625: all 5 discordant docs lost
    (0, 5, 2 * 0.5 ** 5),        # symmetric
    (2, 1, 1.0),                 # 2 * P(X >= 2 | n=3) = 2 * 4/8, capped at 1
    (1, 9, 2 * 11 / 1024),       # 2 * P(X <= 1 | n=10) = 2 * (1 + 10) / 1024
])
def test_mcnemar_exact_hand_values(lost, gained, expected):
    assert mcnemar_exact(lost, gained) == pytest.approx(expected)


@pytest.mark.parametrize("lost, gained, expected", [
    # statsmodels 0.14 statsmodels.stats.contingency_tables.mcnemar([[a, lost], [gained, d]], exact=True).pvalue
    (1, 6, 0.125), (3, 0, 0.25), (9, 2, 0.0654296875),
])
def test_mcnemar_exact_matches_statsmodels(lost, gained, expected):
    assert mcnemar_exact(lost, gained) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("lost, gained", [(3, 17), (40, 25), (1, 0), (100, 100)])
def test_mcnemar_exact_matches_the_binomial_sum(lost, gained):
    """Written out independently: p = min(1, 2 Σ_{k <= min(lost, gained)} C(n, k) / 2^n) in exact fractions."""
    from fractions import Fraction
    from math import comb

    n = lost + gained
    tail = sum(Fraction(comb(n, k), 2**n) for k in range(min(lost, gained) + 1))
    assert mcnemar_exact(lost, gained) == pytest.approx(float(min(Fraction(1), 2 * tail)), rel=1e-12)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


@pytest.mark.parametrize("a, b, expected", [
    (["0", "1", "2"], ["0", "1", "2"], 1.0),            # identical, several labels
    (["0", "0", "0"], ["0", "0", "0"], 1.0),            # degenerate p_e = 1, identical -> 1.0 by convention
    (["0", "0", "1", "1"], ["1", "1", "0", "0"], -1.0),  # p_o = 0, p_e = .5
    # p_o = .2; marginals a: {0: .8, 1: .2}, b: {0: .2, 1: .6, 2: .2}; p_e = .16 + .12 = .28
    (["0", "0", "0", "0", "1"], ["0", "1", "1", "1", "2"], (0.2 - 0.28) / (1 - 0.28)),
    # p_o = .5; marginals both {x: .5, y: .5}; p_e = .5 -> 0: agreement at chance level
    (["x", "x", "y", "y"], ["x", "y", "x", "y"], 0.0),
    # one side constant: p_e = p_o, so kappa = 0 although 3 of 4 agree
    (["a", "a", "a", "a"], ["a", "a", "a", "b"], 0.0),
])
def test_cohen_kappa_hand_values(a, b, expected):
    assert cohen_kappa(a, b) == pytest.approx(expected)


def test_cohen_kappa_empty_is_nan_and_shapes_checked():
    assert np.isnan(cohen_kappa([], []))
    with pytest.raises(ValueError):
        cohen_kappa(["a"], ["a", "b"])


def test_bootstrap_is_deterministic_under_a_seed():
    x = np.random.default_rng(1).normal(size=50)
    first = paired_bootstrap({"x": x}, MEAN, n_resamples=200, seed=7)
    assert first == paired_bootstrap({"x": x}, MEAN, n_resamples=200, seed=7)
    assert first != paired_bootstrap({"x": x}, MEAN, n_resamples=200, seed=8)


def test_bootstrap_interval_contains_estimate_and_matches_scipy():
    x = np.random.default_rng(2).binomial(1, 0.3, size=400).astype(float)
    low, high = paired_bootstrap({"x": x}, MEAN, n_resamples=2000, seed=0)["mean"]
    assert low < x.mean() < high
    ref = scipy_stats.bootstrap((x,), np.mean, n_resamples=2000, method="percentile", random_state=0)
    assert low == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert high == pytest.approx(ref.confidence_interval.high, abs=0.01)
    # the normal approximation of a proportion's 95% interval: +-1.96 * sqrt(p(1-p)/N) ~ +-0.045
    assert (high - low) / 2 == pytest.approx(1.96 * np.sqrt(x.mean() * (1 - x.mean()) / x.size), rel=0.15)


def test_bootstrap_resamples_the_same_docs_for_every_statistic():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    stats = {"x": lambda s: s["x"].mean(axis=-1), "y": lambda s: s["y"].mean(axis=-1),
             "x_minus_y": lambda s: (s["x"] - s["y"]).mean(axis=-1)}
    out = paired_bootstrap({"x": x, "y": x.copy()}, stats, n_resamples=300, seed=0)
    assert out["x"] == out["y"]
    assert out["x_minus_y"] == (0.0, 0.0)  # paired: a doc is always drawn on both sides together


def test_bootstrap_percentiles_of_known_resamples():
    # a constant column has a degenerate interval at the constant
    assert paired_bootstrap({"x": np.full(10, 0.25)}, MEAN, 100, seed=0)["mean"] == (0.25, 0.25)


def test_bootstrap_edge_cases():
    nan_pair = paired_bootstrap({"x": np.array([])}, MEAN, 100, seed=0)["mean"]
    assert np.isnan(nan_pair).all()
    off = paired_bootstrap({"x": np.ones(5)}, MEAN, 0, seed=0)["mean"]  # n_resamples=0: intervals off
    assert np.isnan(off).all()
    all_nan = paired_bootstrap({"x": np.full(5, np.nan)}, MEAN, 50, seed=0)["mean"]
    assert np.isnan(all_nan).all()
    with pytest.raises(ValueError):
        paired_bootstrap({"x": np.ones(3), "y": np.ones(4)}, MEAN, 10, seed=0)
    with pytest.raises(ValueError):
        paired_bootstrap({"x": np.ones(3)}, MEAN, -1, seed=0)


def test_bootstrap_blocks_do_not_change_results(monkeypatch):
    import flipbench.stats as stats_module

    x = np.random.default_rng(4).normal(size=64)
    whole = paired_bootstrap({"x": x}, MEAN, 100, seed=5)
    monkeypatch.setattr(stats_module, "_MAX_BLOCK_ELEMENTS", 64 * 7)  # 7 resamples per block
    assert paired_bootstrap({"x": x}, MEAN, 100, seed=5) == whole
