"""klbounds: KL(p ‖ q) bounds from p's top-k, against hand-computed values and an independent brute force."""

import itertools
import math

import numpy as np
import pytest
import torch  # a hard dependency: a missing torch must fail these tests, not skip them

from flipbench.klbounds import bounds, summarize


def exact_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0.0)))


def run(p, q, k):
    """(lower, upper) from klbounds for one distribution pair given as probabilities."""
    logp = torch.tensor(np.log(p), dtype=torch.float32)[None]
    logq = torch.tensor(np.log(q), dtype=torch.float32)[None]
    top, ids, log_tail = summarize(logp, k)
    lower, upper = bounds(top, ids, log_tail, logq)
    return float(lower[0]), float(upper[0])


def test_hand_computed_example():
    # V = 5, k = 2: S = {0, 1}, cap = 0.25, T_p = 0.35, T_q = 0.4; tail q = (0.05, 0.25, 0.1) on tokens 2, 3, 4.
    p = np.array([0.4, 0.25, 0.2, 0.1, 0.05])
    q = np.array([0.3, 0.3, 0.05, 0.25, 0.1])
    head = 0.4 * math.log(0.4 / 0.3) + 0.25 * math.log(0.25 / 0.3)  # 0.069492
    lower = head + 0.35 * math.log(0.35 / 0.4)  # lumped tail: -0.046736 -> 0.022756
    # vertex: n = floor(0.35 / 0.25) = 1 token at cap on the smallest q (0.05), r = 0.10 on the next (0.1)
    upper = head + 0.25 * math.log(0.25 / 0.05) + 0.10 * math.log(0.10 / 0.1)  # 0.471851
    exact = head + 0.2 * math.log(0.2 / 0.05) + 0.1 * math.log(0.1 / 0.25) + 0.05 * math.log(0.05 / 0.1)
    assert (lower, upper, exact) == pytest.approx((0.022756, 0.471851, 0.220465), abs=1e-6)
    assert run(p, q, 2) == pytest.approx((lower, upper), abs=1e-6)


def brute_force_upper(p: np.ndarray, q: np.ndarray, k: int) -> float:
    """max of the tail term over every vertex of {0 <= x_i <= cap, sum x = T_p}: n tokens at cap and one at the
    remainder, in every order (a convex function's maximum over a polytope is at a vertex); no sorting or greed."""
    order = np.argsort(-p, kind="stable")
    head_ids, tail_ids = order[:k], order[k:]
    head = exact_kl(p[head_ids], q[head_ids])
    cap, T = p[head_ids].min(), p[tail_ids].sum()
    n = int(np.floor(T / cap + 1e-12))
    r = max(T - n * cap, 0.0)
    best = -np.inf
    for chosen in itertools.permutations(range(len(tail_ids)), min(n + 1, len(tail_ids))):
        x = np.zeros(len(tail_ids))
        x[list(chosen[:n])] = cap
        if len(chosen) > n:
            x[chosen[n]] = r
        best = max(best, exact_kl(x, q[tail_ids]))
    return head + best


@pytest.mark.parametrize("seed", range(8))
def test_upper_bound_is_the_brute_force_vertex_maximum(seed):
    rng = np.random.default_rng(seed)
    V, k = 7, int(rng.integers(1, 4))
    p = rng.dirichlet(np.full(V, 0.7))
    q = rng.dirichlet(np.full(V, 0.7))
    lower, upper = run(p, q, k)
    assert upper == pytest.approx(brute_force_upper(p, q, k), rel=1e-5, abs=1e-6)
    assert lower - 1e-6 <= exact_kl(p, q) <= upper + 1e-6


def test_lower_equals_exact_when_the_tails_are_proportional():
    # q = p on the tail up to a common factor: the log-sum inequality is an equality
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    q = np.array([0.2, 0.4, 0.15 * 0.8, 0.1 * 0.8, 0.05 * 0.8])
    assert run(p, q, 2)[0] == pytest.approx(exact_kl(p, q), abs=1e-6)


def test_random_logits_bracket_the_exact_kl_and_tighten_with_k():
    gen = torch.Generator().manual_seed(0)
    logits_p = 3 * torch.randn(64, 500, generator=gen)
    logp = logits_p.log_softmax(-1)
    logq = (logits_p + 0.5 * torch.randn(64, 500, generator=gen)).log_softmax(-1)
    exact = (logp.double().exp() * (logp.double() - logq.double())).sum(-1)
    previous = None
    for k in (1, 8, 64, 250, 499):
        lower, upper = bounds(*summarize(logp, k), logq)
        assert (lower <= exact + 1e-6).all() and (exact <= upper + 1e-6).all()
        if previous is not None:  # more of p stored: the interval narrows on average
            assert (upper - lower).mean() < previous
        previous = (upper - lower).mean()
    # k = V - 1: one tail token, both bounds are that token's exact term
    assert torch.allclose(lower, exact, atol=1e-6) and torch.allclose(upper, exact, atol=1e-6)


def test_a_tail_token_the_compressed_side_rules_out():
    p = np.array([0.6, 0.3, 0.1, 0.0])
    logq = torch.tensor([[math.log(0.5), math.log(0.4), math.log(0.1), float("-inf")]])
    logp = torch.tensor(np.log(np.where(p > 0, p, 1)), dtype=torch.float32)[None]
    logp[0, 3] = float("-inf")
    lower, upper = bounds(*summarize(logp, 2), logq.float())
    # the exact KL is finite (p puts nothing where q is 0), and lower finds it; the vertex may put mass there
    assert float(lower[0]) == pytest.approx(exact_kl(p, np.array([0.5, 0.4, 0.1, 1.0])), abs=1e-6)
    assert math.isinf(float(upper[0]))


def test_summarize_checks_k():
    with pytest.raises(ValueError, match="k must be"):
        summarize(torch.zeros(2, 4), 4)


def test_upper_equals_exact_when_the_baseline_tail_is_full_at_cap():
    # p uniform: every tail token already holds cap, so the only feasible tail is the true one (n = V - k, r = 0)
    p = np.full(6, 1 / 6)
    q = np.array([0.3, 0.1, 0.25, 0.05, 0.2, 0.1])
    lower, upper = run(p, q, 2)
    assert upper == pytest.approx(exact_kl(p, q), abs=1e-6) and lower <= upper
