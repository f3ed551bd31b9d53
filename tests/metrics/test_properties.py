"""Property tests: identities between the metrics on random paired tables, and agreement with scipy."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats as scipy_stats
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr, softmax

from flipbench.metrics import choice_divergence, summarize
from flipbench.stats import cohen_kappa, mcnemar_exact, paired_bootstrap

from .tables import gen_row, mc_row, table

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LL = st.floats(-30, 0, allow_nan=False)
ANSWERS = st.sampled_from(["1", "2", "3", "[invalid]"])


@st.composite
def mc_tables(draw, identical=False):
    rows = []
    for doc in range(draw(st.integers(1, 25))):
        k = draw(st.integers(2, 5))
        ll_b = draw(st.lists(LL, min_size=k, max_size=k))
        ll_c = ll_b if identical else draw(st.lists(LL, min_size=k, max_size=k))
        lengths = draw(st.lists(st.integers(1, 20), min_size=k, max_size=k))
        rows.append(mc_row(doc, draw(st.integers(0, k - 1)), ll_b, ll_c, choice_len=lengths))
    return table(rows)


@st.composite
def gen_tables(draw, identical=False):
    rows = []
    for doc in range(draw(st.integers(1, 25))):
        pred_b = draw(ANSWERS)
        kl = 0.0 if identical else draw(st.floats(0, 5))
        rows.append(gen_row(doc, draw(ANSWERS.filter(lambda a: a != "[invalid]")), pred_b,
                            pred_b if identical else draw(ANSWERS), kl=kl, same_top=1.0, n_tokens=3))
    return table(rows)


def check_identities(summary):
    eps = 1e-12
    assert np.allclose(summary["flips"], summary["lost"] + summary["gained"])
    assert np.allclose(summary["delta_acc"], summary["gained"] - summary["lost"])
    assert np.allclose(summary["delta_acc"], summary["acc_comp"] - summary["acc_base"])
    assert (summary["delta_acc"].abs() <= summary["flips"] + eps).all()
    assert (summary["flips"] <= summary["all_flips"] + eps).all()
    assert np.allclose(summary["all_flips"], 1 - summary["label_loyalty"])
    for column in ("kl_mean", "kl_median", "kl_p90", "kl_p99", "kl_max"):
        assert (summary[column] >= 0).all()
    assert (summary["kl_median"] <= summary["kl_p99"] + eps).all()
    assert (summary["kl_p99"] <= summary["kl_max"] + eps).all()
    assert ((summary["mcnemar_p"] > 0) & (summary["mcnemar_p"] <= 1)).all()
    assert (summary["kappa"] <= 1 + eps).all()
    for name in ("flips", "delta_acc", "label_loyalty", "kl_mean"):
        assert (summary[f"{name}_ci_low"] <= summary[f"{name}_ci_high"]).all()


@SETTINGS
@given(mc_tables())
def test_mc_identities(samples):
    summary = summarize(samples, metrics_by_task={"mc": ["acc", "acc_norm"]}, n_resamples=20)
    check_identities(summary)
    assert ((summary["prob_loyalty"] >= 0) & (summary["prob_loyalty"] <= 1 + 1e-12)).all()


@SETTINGS
@given(gen_tables())
def test_generative_identities(samples):
    summary = summarize(samples, n_resamples=20)
    check_identities(summary)
    assert (summary["flips_to_invalid"] <= summary["invalid_comp"]).all()


@SETTINGS
@given(st.one_of(mc_tables(identical=True), gen_tables(identical=True)))
def test_identical_sides(samples):
    summary = summarize(samples, metrics_by_task={"mc": ["acc", "acc_norm"]}, n_resamples=20)
    assert (summary[["flips", "lost", "gained", "delta_acc", "all_flips", "kl_max"]] == 0).all().all()
    assert (summary["label_loyalty"] == 1).all() and (summary["kappa"] == 1).all()
    assert (summary["mcnemar_p"] == 1).all()


@SETTINGS
@given(st.integers(2, 6).flatmap(lambda k: st.tuples(
    arrays(float, (k,), elements=st.floats(-40, 5)), arrays(float, (k,), elements=st.floats(-40, 5)))))
def test_choice_divergence_matches_scipy(lls):
    p_b, p_c = softmax(lls[0]), softmax(lls[1])
    kl, js, margin = choice_divergence(p_b, p_c)
    assert kl >= 0 and 0 <= js <= 1 and 0 <= margin <= 1
    reference = rel_entr(p_b, p_c).sum()
    if np.isfinite(reference):
        assert kl == pytest.approx(reference, rel=1e-9, abs=1e-12)
    assert js == pytest.approx(jensenshannon(p_b, p_c, base=2), abs=1e-12)


@SETTINGS
@given(st.integers(0, 60), st.integers(0, 60))
def test_mcnemar_matches_binomtest(lost, gained):
    expected = 1.0 if lost + gained == 0 else scipy_stats.binomtest(lost, lost + gained).pvalue
    assert mcnemar_exact(lost, gained) == pytest.approx(expected)
    assert mcnemar_exact(lost, gained) == pytest.approx(mcnemar_exact(gained, lost))


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcd")), min_size=1, max_size=40))
def test_kappa_matches_confusion_matrix_formula(pairs):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    labels = sorted(set(a) | set(b))
    confusion = np.zeros((len(labels), len(labels)))
    for x, y in pairs:
        confusion[labels.index(x), labels.index(y)] += 1
    confusion /= len(pairs)
    p_o, p_e = np.trace(confusion), confusion.sum(1) @ confusion.sum(0)
    expected = 1.0 if np.isclose(p_e, 1) else (p_o - p_e) / (1 - p_e)
    assert cohen_kappa(a, b) == pytest.approx(expected)
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa(b, a))


@SETTINGS
@given(arrays(float, st.integers(1, 40), elements=st.floats(-5, 5)), st.integers(0, 2**32 - 1))
def test_bootstrap_mean_interval_within_data_range(x, seed):
    low, high = paired_bootstrap({"x": x}, {"m": lambda s: s["x"].mean(axis=-1)}, 50, seed)["m"]
    assert x.min() - 1e-9 <= low <= high <= x.max() + 1e-9
