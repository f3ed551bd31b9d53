"""Choice-level distributions and divergences: softmax, KL, JS distance, margin, annotate()."""

import math

import numpy as np
import pandas as pd
import pytest

from flipbench.metrics import annotate, choice_distribution, choice_divergence

from .tables import gen_row, log, mc_row, table

LN2 = np.log(2)
# KL([.5,.25,.25] || [.25,.5,.25]) = .5 ln(.5/.25) + .25 ln(.25/.5) + 0 = .25 ln 2
KL_SWAP = 0.25 * LN2
# JS between the same pair: m = [.375,.375,.25]; each KL(.||m) = .5 ln(4/3) + .25 ln(2/3) nats;
# JS divergence in bits = that / ln 2; distance = sqrt
JS_SWAP = np.sqrt((0.5 * np.log(4 / 3) + 0.25 * np.log(2 / 3)) / LN2)


@pytest.mark.parametrize("ll, expected", [
    ([0.0, 0.0], [0.5, 0.5]),
    (log(0.5, 0.25, 0.25), [0.5, 0.25, 0.25]),
    ([-1000.0, 0.0], [0.0, 1.0]),           # no overflow: softmax is shift invariant
    ([-np.inf, 0.0, 0.0], [0.0, 0.5, 0.5]),  # an impossible choice
])
def test_choice_distribution(ll, expected):
    np.testing.assert_allclose(choice_distribution(ll), expected, atol=1e-12)


@pytest.mark.parametrize("p_b, p_c, kl, js, margin", [
    ([0.5, 0.25, 0.25], [0.5, 0.25, 0.25], 0.0, 0.0, 0.25),
    ([0.5, 0.25, 0.25], [0.25, 0.5, 0.25], KL_SWAP, JS_SWAP, 0.25),
    ([1.0, 0.0], [0.0, 1.0], 1.0 * -np.log(np.finfo(float).tiny), 1.0, 1.0),  # finite, not inf
    # .7 ln 1 + .2 ln(.2/.1) + .1 ln(.1/.2) = .1 ln 2
    ([0.7, 0.2, 0.1], [0.7, 0.1, 0.2], 0.1 * LN2, None, 0.5),
    ([1.0], [1.0], 0.0, 0.0, 1.0),  # a single choice: margin is its probability
])
def test_choice_divergence_hand_values(p_b, p_c, kl, js, margin):
    got_kl, got_js, got_margin = choice_divergence(p_b, p_c)
    assert got_kl == pytest.approx(kl, abs=1e-12)
    if js is not None:
        assert got_js == pytest.approx(js, abs=1e-12)
    assert got_margin == pytest.approx(margin)


def _kl(p, q) -> float:
    """KL in nats written out term by term (0 log 0 = 0), independent of scipy's rel_entr."""
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_choice_divergence_rows_match_the_definitions():
    rng = np.random.default_rng(0)
    p_b, p_c = rng.dirichlet(np.ones(4), size=20), rng.dirichlet(np.ones(4), size=20)
    kl, js, margin = choice_divergence(p_b, p_c)
    for i in range(20):
        m = (p_b[i] + p_c[i]) / 2
        assert kl[i] == pytest.approx(_kl(p_b[i], p_c[i]), rel=1e-12)
        # JS distance base 2: sqrt of the JS divergence in bits, (KL(p||m) + KL(q||m)) / 2 / ln 2
        assert js[i] == pytest.approx(math.sqrt((_kl(p_b[i], m) + _kl(p_c[i], m)) / 2 / math.log(2)), rel=1e-9)
        assert margin[i] == pytest.approx(np.sort(p_b[i])[-1] - np.sort(p_b[i])[-2])


def test_choice_divergence_shape_mismatch():
    with pytest.raises(ValueError):
        choice_divergence([0.5, 0.5], [0.2, 0.3, 0.5])


def test_annotate_ragged_mc_and_generative_rows():
    samples = table([
        mc_row(0, 0, log(0.5, 0.25, 0.25), log(0.25, 0.5, 0.25)),
        mc_row(1, 1, log(0.6, 0.4), log(0.6, 0.4)),                      # 2 choices: ragged
        mc_row(2, 3, log(0.1, 0.2, 0.3, 0.4), log(0.1, 0.2, 0.3, 0.4)),  # 4 choices
        gen_row(3, "4", "4", "5", kl=0.3, same_top=0.5, n_tokens=2),
    ])
    out = annotate(samples)
    assert samples["kl"].isna().iloc[:3].all()  # input untouched
    np.testing.assert_allclose(out["p_base"][0], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(out["p_comp"][0], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(out["p_base"][1], [0.6, 0.4])
    np.testing.assert_allclose(out["kl"], [KL_SWAP, 0.0, 0.0, 0.3], atol=1e-12)
    np.testing.assert_allclose(out["js"][:3], [JS_SWAP, 0.0, 0.0], atol=1e-7)
    assert np.isnan(out["js"][3])
    np.testing.assert_allclose(out["margin_base"][:3], [0.25, 0.2, 0.1])
    assert np.isnan(out["margin_base"][3])
    assert list(out["p_base"][3]) == []
    assert out["same_top"][3] == 0.5 and out["n_tokens"][3] == 2
    assert out[["same_top", "n_tokens"]].iloc[:3].isna().all().all()


def test_annotate_survives_parquet_round_trip(tmp_path):
    samples = annotate(table([mc_row(0, 0, log(0.5, 0.5), log(0.9, 0.1)), gen_row(1, "1", "1", "2")]))
    path = tmp_path / "samples.parquet"
    samples.to_parquet(path, index=False)
    again = annotate(pd.read_parquet(path))  # list cells come back as numpy arrays
    np.testing.assert_allclose(again["kl"], samples["kl"], equal_nan=True)


def test_annotate_non_finite_ll_gives_nan_rows_not_errors():
    samples = table([
        mc_row(0, 0, [0.0, -1.0], [np.nan, -1.0]),
        mc_row(1, 0, [0.0, -1.0], [np.inf, -1.0]),
        mc_row(2, 0, [0.0, -1.0], [-np.inf, 0.0]),  # p_c = [0, 1]: finite (floored) KL
    ])
    out = annotate(samples)
    assert np.isnan(out["kl"][0]) and np.isnan(out["kl"][1])
    assert np.isfinite(out["kl"][2]) and out["kl"][2] > 0


def test_annotate_rejects_mismatched_choice_counts():
    row = mc_row(0, 0, [0.0, -1.0], [0.0, -1.0])
    row["ll_comp"] = [0.0, -1.0, -2.0]
    with pytest.raises(ValueError, match="differ in length"):
        annotate(table([row]))
