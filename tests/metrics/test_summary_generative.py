"""summarize() on generative tasks: per-filter rows, answer agreement, [invalid] answers, token KL."""

import numpy as np
import pytest

from flipbench.metrics import summarize

from .tables import gen_row, table

TARGETS = ["4", "5", "7", "9", "2"]
PRED_B = ["4", "[invalid]", "7", "10", "3"]
PRED_C = ["4", "5", "[invalid]", "[invalid]", "3"]
KL = [0.0, 0.1, 0.2, 0.3, 0.4]
SAME_TOP = [1.0, 0.5, 0.5, 0.5, 1.0]
N_TOKENS = [1, 2, 2, 2, 1]


def strict_rows(kl=KL, same_top=SAME_TOP, n_tokens=N_TOKENS):
    """doc | pred_b pred_c | correct b c
        0  |  4     4      |  1 1     agree
        1  | inv    5      |  0 1     gained
        2  |  7    inv     |  1 0     lost, flip into [invalid]
        3  | 10    inv     |  0 0     wrong -> invalid
        4  |  3     3      |  0 0     agree (both wrong)
    """
    return [gen_row(i, TARGETS[i], PRED_B[i], PRED_C[i], kl=kl[i], same_top=same_top[i], n_tokens=n_tokens[i])
            for i in range(5)]


HAND = {
    "n": 5, "acc_base": 0.4, "acc_comp": 0.4, "delta_acc": 0.0, "lost": 0.2, "gained": 0.2, "flips": 0.4,
    "label_loyalty": 0.4, "answer_agreement": 0.4, "all_flips": 0.6,
    "invalid_base": 0.2, "invalid_comp": 0.4,
    # right -> [invalid] is doc 2 only; doc 3 went wrong -> [invalid], which is no flip
    "flips_to_invalid": 0.2, "lost_to_invalid": 0.2, "lost_to_wrong": 0.0,
    # p_o = .4; pred_b: five labels at .2; pred_c: {4: .2, 5: .2, inv: .4, 3: .2}; p_e = .04 + .08 + .04
    "kappa": (0.4 - 0.16) / 0.84,
    "mcnemar_p": 1.0,
    # token-weighted (N_TOKENS tokens per doc, each carrying its doc's kl): sorted token KL
    # [0, .1, .1, .2, .2, .3, .3, .4]; p90 at rank 0.9 * 7 = 6.3 -> .33, p99 at 6.93 -> .393, median (.2 + .2) / 2
    "kl_mean": 0.2, "kl_median": 0.2, "kl_p90": 0.33, "kl_p99": 0.393, "kl_max": 0.4, "kl_min": 0.0,
    "kl_p10": 0.07, "kl_doc_mean": 0.2,
    "same_top": 5 / 8, "n_tokens": 8, "n_kl": 5, "n_nonfinite": 0,
}


@pytest.fixture(scope="module")
def two_filters():
    flexible = [gen_row(i, TARGETS[i], TARGETS[i], TARGETS[i], filter="flexible-extract") for i in range(5)]
    return summarize(table(strict_rows() + flexible), n_resamples=300)


@pytest.mark.parametrize("column", sorted(HAND))
def test_hand_computed_values(two_filters, column):
    assert two_filters[column].iloc[0] == pytest.approx(HAND[column], abs=1e-12)


def test_one_row_per_filter_first_is_headline(two_filters):
    assert two_filters[["filter", "metric", "headline", "group"]].values.tolist() == [
        ["strict-match", "exact_match", True, "all"], ["flexible-extract", "exact_match", False, "all"]]
    flexible = two_filters.iloc[1]
    assert flexible["flips"] == 0 and flexible["acc_base"] == 1 and flexible["kappa"] == 1
    assert (two_filters["kl_scope"] == "token").all() and two_filters["prob_loyalty"].isna().all()


def test_intervals_bracket_the_estimate(two_filters):
    row = two_filters.iloc[0]
    for name in ("flips", "delta_acc", "label_loyalty", "kl_mean"):
        assert row[f"{name}_ci_low"] <= HAND[name] <= row[f"{name}_ci_high"]


def test_before_token_kl_is_computed():
    nan = [np.nan] * 5
    row = summarize(table(strict_rows(kl=nan, same_top=nan, n_tokens=nan)), n_resamples=20).iloc[0]
    assert row[["kl_mean", "kl_max", "kl_mean_ci_low", "same_top", "n_tokens"]].isna().all()
    assert row["n_kl"] == 0 and row["n_nonfinite"] == 0 and row["flips"] == pytest.approx(0.4)


def test_diverged_token_kl_is_counted_and_left_out():
    kl = [0.0, 0.1, np.nan, 0.3, np.inf]
    rows = strict_rows(kl=kl)
    rows[4].update(tok_kl=[np.inf], tok_same_top=[0.0], tok_logp_base=[-1.0], tok_logp_comp=[-np.inf])
    row = summarize(table(rows), n_resamples=20).iloc[0]
    assert row["n_nonfinite"] == 2 and row["n_kl"] == 3
    # finite tokens: doc 0 [0], doc 1 [.1, .1], doc 3 [.3, .3]; the doc 4 token of infinite KL is left out
    assert row["kl_mean"] == pytest.approx(0.8 / 5) and row["kl_max"] == pytest.approx(0.3)
    assert row["kl_doc_mean"] == pytest.approx(0.4 / 3)


def test_generative_metric_must_be_the_stored_one():
    with pytest.raises(ValueError, match="cannot report"):
        summarize(table(strict_rows()), metrics_by_task={"gen": ["acc"]})
    ok = summarize(table(strict_rows()), metrics_by_task={"gen": ["exact_match"]}, n_resamples=5)
    assert ok["metric"].tolist() == ["exact_match"]


def test_group_missing_a_filter_gets_an_empty_row():
    rows = [gen_row(0, "1", "1", "1", group="a"), gen_row(1, "2", "2", "3", group="b"),
            gen_row(1, "2", "2", "2", group="b", filter="flexible-extract")]
    out = summarize(table(rows), n_resamples=20).set_index(["group", "filter"])
    empty = out.loc[("a", "flexible-extract")]
    assert empty["n"] == 0 and empty[["acc_base", "flips", "kappa", "flips_ci_low"]].isna().all()
    assert out.loc[("all", "strict-match"), "n"] == 2 and out.loc[("b", "strict-match"), "lost"] == 1.0
