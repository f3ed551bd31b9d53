"""Token-level KL statistics as llama.cpp's --kl-divergence reports them, on hand-made log-probabilities; their
standard errors are clustered by doc (the tokens of one answer are not independent)."""

import math

import numpy as np
import pandas as pd
import pytest

import torch

from flipbench import klstats
from flipbench.tokenkl import _compare, _summarize

LN = math.log
# Two answer tokens over a 3-token vocabulary (probabilities; 0 = ruled out):
#   t1: p_b = (.5, .5, 0), p_c = (.25, .75, 0): token 2 ruled out by both; answer token 1
#   t2: p_b = (1, 0, 0),   p_c = (.5, .5, 0):   tokens 1, 2 ruled out by b; answer token 0
P_B = [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]
P_C = [[0.25, 0.75, 0.0], [0.5, 0.5, 0.0]]
TARGETS = [1, 0]
KL = [0.5 * LN(0.5 / 0.25) + 0.5 * LN(0.5 / 0.75), LN(1 / 0.5)]  # 0.143841, 0.693147 nats
DP = [0.75 - 0.5, 0.5 - 1.0]  # p_c - p_b of the answer token
D_NLL = [LN(0.5) - LN(0.75), LN(1.0) - LN(0.5)]  # ln p_b - ln p_c
# Both tokens belong to one answer (one doc): one cluster, so no standard error can be estimated.
HAND = {
    "kl_mean": sum(KL) / 2, "kl_se": math.nan,
    "kl_max": KL[1], "kl_min": KL[0], "kl_median": sum(KL) / 2,
    "kl_p99": KL[0] + 0.99 * (KL[1] - KL[0]), "kl_p10": KL[0] + 0.1 * (KL[1] - KL[0]),
    "kl_p001": KL[0] + 0.001 * (KL[1] - KL[0]),
    "same_top": 0.5, "same_top_se": math.nan,  # t1: argmax 0 vs 1 (ties go to the first index); t2: 0 vs 0
    "dp_mean": sum(DP) / 2, "dp_rms": math.sqrt((DP[0] ** 2 + DP[1] ** 2) / 2),
    "ln_ppl_ratio": sum(D_NLL) / 2, "ln_ppl_ratio_se": math.nan,
}
# The same two tokens as two one-token docs: G = 2 clusters, SE² = G/(G-1) Σ_g (x_g - x̄)² / N² = (a - b)² / 4.
HAND_TWO_DOCS = {"kl_se": abs(KL[1] - KL[0]) / 2, "same_top_se": 0.5, "ln_ppl_ratio_se": abs(D_NLL[1] - D_NLL[0]) / 2}


def logp(p):
    return torch.tensor(p, dtype=torch.float32).log()  # log(0) = -inf: no probability floor


def compare(p_b, p_c, targets):
    """_compare on one row from the baseline's full distribution (exact KL)."""
    targets = torch.tensor(targets)
    return _compare(_summarize(logp(p_b), targets, 0), logp(p_c), targets, [len(targets)])


@pytest.fixture(scope="module")
def per_token():
    return compare(P_B, P_C, TARGETS)


def test_per_token_values_without_nan(per_token):
    assert per_token["tok_kl"][0] == pytest.approx(KL, rel=1e-6)  # the both-ruled-out token adds 0, not NaN
    assert per_token["tok_kl_upper"][0].tolist() == per_token["tok_kl"][0].tolist()  # exact: no interval
    assert per_token["tok_same_top"][0].tolist() == [0.0, 1.0]
    assert np.exp(per_token["tok_logp_base"][0]) == pytest.approx([0.5, 1.0])
    assert np.exp(per_token["tok_logp_comp"][0]) == pytest.approx([0.75, 0.5])


@pytest.mark.parametrize("column", sorted(HAND))
def test_hand_computed_statistics(per_token, column):
    rows = pd.DataFrame({name: [values[0].tolist()] for name, values in per_token.items()})
    assert klstats.token_stats(rows)[column] == pytest.approx(HAND[column], rel=1e-6, abs=1e-9, nan_ok=True)


@pytest.mark.parametrize("column", sorted(HAND_TWO_DOCS))
def test_standard_errors_are_clustered_by_doc(per_token, column):
    two_docs = pd.DataFrame({name: [values[0][:1].tolist(), values[0][1:].tolist()] for name, values in per_token.items()})
    assert klstats.token_stats(two_docs)[column] == pytest.approx(HAND_TWO_DOCS[column], rel=1e-6)


def test_clustered_se_matches_statsmodels():
    # 7 token KLs in 3 docs; statsmodels 0.14 OLS(x, 1).fit(cov_type="cluster", groups=doc) gives mean
    # 0.3642857142857143, SE 0.10564551383716775 (tokens taken as independent, the SE would be 0.1138)
    rows = pd.DataFrame({"tok_kl": [[0.1, 0.3, 0.2], [0.6], [0.05, 0.9, 0.4]],
                         "tok_same_top": [[1.0] * 3, [1.0], [1.0] * 3], "tok_logp_base": [[0.0] * 3, [0.0], [0.0] * 3],
                         "tok_logp_comp": [[0.0] * 3, [0.0], [0.0] * 3]})
    stats = klstats.token_stats(rows)
    assert stats["kl_mean"] == pytest.approx(0.3642857142857143, rel=1e-12)
    assert stats["kl_se"] == pytest.approx(0.10564551383716775, rel=1e-12)


def test_compressed_side_ruling_out_a_baseline_token_is_infinite_and_left_out_of_the_statistics():
    out = compare([[0.5, 0.5]], [[1.0, 0.0]], [0])
    assert out["tok_kl"][0].tolist() == [math.inf]
    rows = pd.DataFrame({"tok_kl": [[0.2, math.inf], [0.4]], "tok_same_top": [[1.0, 0.0], [1.0]],
                         "tok_logp_base": [[0.0, LN(0.5)], [LN(0.5)]], "tok_logp_comp": [[0.0, -math.inf], [LN(0.25)]]})
    stats = klstats.token_stats(rows)
    assert stats["kl_mean"] == pytest.approx(0.3) and stats["kl_max"] == pytest.approx(0.4)
    assert stats["same_top"] == pytest.approx(2 / 3)
    assert stats["dp_mean"] == pytest.approx((0 - 0.5 - 0.25) / 3)  # a ruled-out token has p = 0
    assert stats["ln_ppl_ratio"] == pytest.approx((0 + LN(2)) / 2)  # the infinite ln-ratio token is left out


def test_token_sums_per_doc_and_choice_scope():
    rows = pd.DataFrame({"tok_kl": [[0.2, math.inf, 0.1], [], [None]]})
    sums, counts = klstats.token_sums(rows)
    assert sums[0] == pytest.approx(0.3) and counts.tolist() == [2, 0, 0] and np.isnan(sums[1:]).all()
    choice = klstats.choice_stats([0.1, 0.3, np.nan])
    assert choice["kl_mean"] == pytest.approx(0.2) and choice["kl_se"] == pytest.approx(0.1)
    assert all(np.isnan(choice[c]) for c in klstats.TOKEN_ONLY)


def test_mean_upper_bound_over_the_tokens_kl_mean_counts():
    # per-token bounds [0.1, 0.3], [inf, inf] (diverged, left out of both), [0.2, 0.5]
    rows = pd.DataFrame({"tok_kl": [[0.1, math.inf], [0.2]], "tok_kl_upper": [[0.3, math.inf], [0.5]],
                         "tok_same_top": [[1.0, 1.0], [1.0]], "tok_logp_base": [[0.0, 0.0], [0.0]],
                         "tok_logp_comp": [[0.0, 0.0], [0.0]]})
    stats = klstats.token_stats(rows)
    assert stats["kl_mean"] == pytest.approx(0.15) and stats["kl_mean_upper"] == pytest.approx(0.4)
    assert np.isnan(klstats.token_stats(rows.drop(columns="tok_kl_upper"))["kl_mean_upper"])  # older samples
