"""Sequential gate, second part: the stratified order, the clipped-KL mean bound, resuming from stored chunks."""

import math

import numpy as np
import pytest
from scipy.stats import hypergeom

from flipbench import sequential as seq
from flipbench.seqbounds import (
    bernstein_serfling_bounds, bernstein_serfling_width, hoeffding_serfling_bounds, hoeffding_serfling_width, mean_bounds,
    serfling_rho,
)


def _strata(sizes: dict) -> tuple[list, dict]:
    units = [(name, i) for name, m in sizes.items() for i in range(m)]
    return units, {u: u[0] for u in units}


def test_two_equal_subjects_alternate():
    # keys (j + u_A)/3 and (j + u_B)/3: the subjects alternate, so a prefix of 2k holds k of each
    units, strata = _strata({"A": 3, "B": 3})
    for seed in range(20):
        order = [s for s, _ in seq.doc_order(units, seed, "t", strata)]
        assert order in (["A", "B"] * 3, ["B", "A"] * 3)


def test_every_prefix_is_balanced_and_the_order_deterministic():
    sizes = {"a": 60, "b": 30, "c": 20, "d": 10}
    units, strata = _strata(sizes)
    N = len(units)
    worst_strat, worst_plain = 0.0, 0.0
    for seed in range(50):
        order = seq.doc_order(units, seed, "t", strata)
        assert order == seq.doc_order(list(reversed(units)), seed, "t", strata) and sorted(order) == sorted(units)
        plain = seq.doc_order(units, seed, "t")
        for name, m in sizes.items():
            for kind, o in (("strat", order), ("plain", plain)):
                counts = np.cumsum([s == name for s, _ in o])
                dev = np.abs(counts - np.arange(1, N + 1) * m / N).max()
                if kind == "strat":
                    # subject s holds floor(t m_s - u_s) + 1 keys <= t: within one of t m_s, and n within S of t N
                    assert dev < 1 + len(sizes) * m / N
                    worst_strat = max(worst_strat, dev)
                else:
                    worst_plain = max(worst_plain, dev)
    assert worst_strat < 2.5 < worst_plain  # a plain permutation drifts by several docs


@pytest.mark.parametrize("rates", [pytest.param((0.0, 0.0, 0.5, 0.0), marks=pytest.mark.slow), (0.02, 0.05, 0.15, 0.3)])
def test_stratified_order_keeps_the_wrong_decision_rate_below_alpha(rates):
    """The exact hypergeometric bound assumes a simple random sample; over 10,000 stratified orders of a population
    whose flips sit unevenly in the subjects, stopping at the first decided look, wrong decisions stay <= alpha."""
    sizes = {"a": 60, "b": 30, "c": 20, "d": 10}
    units, strata = _strata(sizes)
    N, alpha = len(units), 0.05
    positive = {}
    for (name, m), rate in zip(sizes.items(), rates):
        for i in range(m):
            positive[(name, i)] = i < round(rate * m)
    K = sum(positive.values())
    limit = K / N + (0.0 if rates[0] == 0 else -0.01)  # at the limit (PASS right) or just below it (FAIL right)
    truth = "PASS" if K / N <= limit else "FAIL"
    plan = seq.looks(N, 20)
    a = seq.alpha_per_look(alpha, len(plan), 1)
    upper = {n: np.array([seq.count_upper(x, n, N, a) for x in range(n + 1)]) for n in plan}
    lower = {n: np.array([seq.count_lower(x, n, N, a) for x in range(n + 1)]) for n in plan}
    wrong = 0
    for seed in range(10_000):
        hits = np.cumsum([positive[u] for u in seq.doc_order(units, seed, "t", strata)])
        for n in plan:
            x = hits[n - 1]
            if lower[n][x] / N > limit:
                wrong += truth != "FAIL"
                break
            if upper[n][x] / N <= limit:
                wrong += truth != "PASS"
                break
    assert wrong / 10_000 <= alpha


SLOW = pytest.mark.slow


@pytest.mark.parametrize("bound,N,a", [(hoeffding_serfling_bounds, 40, 0.05), pytest.param(hoeffding_serfling_bounds, 40, 0.01, marks=SLOW),
                                       (hoeffding_serfling_bounds, 25, 0.1), (bernstein_serfling_bounds, 25, 0.1),
                                       (mean_bounds, 25, 0.1), pytest.param(bernstein_serfling_bounds, 40, 0.05, marks=SLOW),
                                       pytest.param(mean_bounds, 40, 0.05, marks=SLOW)])
def test_mean_bounds_on_two_point_populations_exactly(N, a, bound):
    """For a population of K values at the clip and N - K at 0 the sample mean (and its variance) is a function of
    the hypergeometric count, so each bound's miss probability is computed exactly: P(upper < mean) <= a and
    P(lower > mean) <= a at every n."""
    clip = 2.0
    for K in range(N + 1):
        mean = clip * K / N
        for n in range(1, N + 1):
            xs = np.arange(max(0, n - (N - K)), min(n, K) + 1)
            miss_up = miss_low = 0.0
            for x in xs:
                low, up = bound(np.r_[np.full(x, clip), np.zeros(n - x)], N, clip, a)
                p = hypergeom.pmf(x, N, K, n)
                miss_up += p * (up < mean - 1e-12)
                miss_low += p * (low > mean + 1e-12)
            assert miss_up <= a and miss_low <= a, (K, n)


def test_mean_bound_by_hand_and_exact_at_full_population():
    # n = 2 of N = 10, values 0.1 and 0.3 (clip 1): rho = 1 - 1/10 = 0.9, width = sqrt(0.9 ln 20 / 4)
    width = math.sqrt(0.9 * math.log(20) / 4)
    low, up = hoeffding_serfling_bounds([0.1, 0.3], 10, 1.0, 0.05)
    assert low == 0.0 and up == pytest.approx(min(0.2 + width, 1.0))
    # empirical Bernstein-Serfling, n = 100 of N = 1000, B = 1, s = 0.1, a = 0.05 (the formula as Bardenet &
    # Maillard state it, delta = a / 5): 0.1 sqrt(2 * 0.901 * ln 100 / 100) + (7/3 + 3/sqrt 2) ln 100 / 100
    assert bernstein_serfling_width(0.1, 100, 1000, 1.0, 0.05) == pytest.approx(0.0288071 + 0.2051444, abs=1e-6)
    # 0.2 and 0.4 alternating: s = 0.1 (divisor n); the combined bound takes the tighter of the two at a / 2
    v = np.tile([0.2, 0.4], 500)
    eb_width = 0.1 * math.sqrt(2 * (1 - 999 / 10_000) * math.log(200) / 1000) + (7 / 3 + 3 / math.sqrt(2)) * math.log(200) / 1000
    hs_width = math.sqrt((1 - 999 / 10_000) * math.log(40) / 2000)
    assert bernstein_serfling_bounds(v, 10_000, 1.0, 0.025)[1] == pytest.approx(0.3 + eb_width)
    assert mean_bounds(v, 10_000, 1.0, 0.05) == (pytest.approx(0.3 - min(eb_width, hs_width)),
                                                  pytest.approx(0.3 + min(eb_width, hs_width)))
    assert eb_width < hs_width  # 0.0292 < 0.0412: a small variance over many docs, Bernstein is tighter
    # n > N/2: rho = (1 - n/N)(1 + 1/n); n = N: 0, the bound is the exact clipped mean (a NaN counts as clip / 0)
    assert serfling_rho(8, 10) == pytest.approx(0.2 * 1.125) and serfling_rho(10, 10) == 0.0
    v = [0.0, 0.5, 2.0, 0.25]
    assert mean_bounds(v, 4, 1.0, 1e-9) == (pytest.approx(1.75 / 4), pytest.approx(1.75 / 4))
    assert mean_bounds([0.2, np.nan], 2, 1.0, 0.01) == (pytest.approx(0.1), pytest.approx(0.6))


@pytest.mark.parametrize("name", ["near", "gamma"])
def test_small_variance_kl_bounds_cover_and_bernstein_stops_sooner(name):
    """2,000 random orders of N = 4,000 docs' clipped KL (clip 0.3, limit 0.03, ten looks of 400, alpha 0.05 over
    them): each bound alone (Hoeffding-Serfling, empirical Bernstein-Serfling, at alpha / 10 per look) and the combined
    one (the tighter at alpha / 20 each) miss the population mean above, at any look, in at most alpha of the orders,
    and below likewise; the combined bound decides PASS sooner on average than Hoeffding-Serfling alone. At n = N
    every bound is the exact mean."""
    rng = np.random.default_rng(5)
    N, B, limit, alpha, streams = 4000, 0.3, 0.03, 0.05, 2000
    if name == "near":  # every doc near 0.02 nats: sd 0.005, a tenth of the limit's distance
        kl = np.clip(rng.normal(0.02, 0.005, N), 0, B)
    else:  # skewed: gamma with mean 0.02 and sd 0.01
        kl = np.clip(rng.gamma(4, 0.005, N), 0, B)
    mu = kl.mean()
    assert mu < limit and kl.std() < limit / 2  # a small variance: sd under half the limit, a twentieth of the range
    plan = seq.looks(N, 400)
    a = alpha / len(plan)
    orders = rng.permuted(np.tile(kl, (streams, 1)), axis=1)
    sums, squares = orders.cumsum(axis=1), (orders ** 2).cumsum(axis=1)
    upper, lower = {}, {}
    for n in plan:
        mean = sums[:, n - 1] / n
        sd = np.sqrt(np.maximum(squares[:, n - 1] / n - mean ** 2, 0.0))
        exact = n == N
        hs = {k: 0.0 if exact else hoeffding_serfling_width(n, N, B, k) for k in (a, a / 2)}
        eb = {k: 0.0 if exact else bernstein_serfling_width(sd, n, N, B, k) for k in (a, a / 2)}
        widths = {"hs": hs[a] + 0 * sd, "eb": eb[a] + 0 * sd, "both": np.minimum(hs[a / 2], eb[a / 2])}
        for kind, width in widths.items():
            upper.setdefault(kind, []).append(mean + width)
            lower.setdefault(kind, []).append(mean - width)
        if exact:
            assert all(np.allclose(b(orders[0], N, B, a), mu) for b in (hoeffding_serfling_bounds,
                                                                       bernstein_serfling_bounds, mean_bounds))
    # the vectorised widths are the functions' own: one order at one look
    n, k = plan[2], 2
    assert np.allclose(mean_bounds(orders[k, :n], N, B, a), (max(lower["both"][2][k], 0.0), upper["both"][2][k]))
    stops = {}
    for kind in upper:
        up, low = np.array(upper[kind]), np.array(lower[kind])  # (looks, streams)
        assert (up < mu - 1e-12).any(axis=0).mean() <= alpha and (low > mu + 1e-12).any(axis=0).mean() <= alpha
        decided = up <= limit
        assert decided[-1].all()  # the last look is exact
        stops[kind] = np.array(plan)[decided.argmax(axis=0)].mean()
    assert stops["both"] < stops["hs"] and stops["eb"] < stops["hs"], stops


@pytest.mark.parametrize("limit", [pytest.param(0.06, marks=pytest.mark.slow), 0.2])
def test_simulated_kl_decisions_below_alpha(limit):
    """10,000 random orders of 300 docs' choice KL (mostly small, a heavy tail), stopping at the first decided look:
    a PASS when the clipped mean exceeds the limit, or a FAIL when the (unclipped) mean is within it, is wrong."""
    rng = np.random.default_rng(11)
    N, alpha, clip = 300, 0.05, 1.0
    kl = np.concatenate([rng.exponential(0.02, N - 30), rng.uniform(0.2, 3.0, 30)])
    clipped_mean, mean = np.minimum(kl, clip).mean(), kl.mean()
    plan = seq.looks(N, 50)
    a = seq.alpha_per_look(alpha, len(plan), 1)
    assert mean > 0.15 and 0.1 < clipped_mean < 0.11  # limit 0.06: FAIL is right; 0.2: PASS is right
    wrong = early = 0
    for stream in range(10_000):
        order = kl[rng.permutation(N)]
        for n in plan:
            low, up = mean_bounds(order[:n], N, clip, a)
            if low > limit or up <= limit:
                wrong += (mean <= limit) if low > limit else (clipped_mean > limit)
                early += n < N
                break
        else:
            raise AssertionError("the last look decides")
    assert wrong / 10_000 <= alpha and early > 5_000  # most streams stop before the last look


def _fake(monkeypatch, flips):
    from test_sequential import _fake_setup

    return _fake_setup(monkeypatch, flips)


def test_a_killed_run_resumes_from_its_stored_chunks(monkeypatch, tmp_path):
    from flipbench.config import FlipbenchConfig

    flips = {"good": set(range(0, 400, 40)), "bad_a": set(range(0, 150, 12)), "bad_b": set(range(0, 250, 12))}
    task_objs, plan, calls, evaluate = _fake(monkeypatch, flips)
    cfg = FlipbenchConfig()
    cfg.gate.sequential, cfg.gate.max_flips, cfg.gate.sequential_all, cfg.gate.chunk = True, 0.05, True, 40
    _, full, whole = seq.run_sequential(None, None, task_objs, plan, cfg, evaluate=evaluate)
    chunks = len([c for c in calls if c[0] == "compressed"])
    assert chunks >= 3
    calls.clear()

    def killed_after(k):
        def run(*args, **kwargs):
            if len([c for c in calls if c[0] == "compressed"]) == k:
                raise KeyboardInterrupt("killed")
            return evaluate(*args, **kwargs)
        return run

    store = lambda: seq.ChunkStore(tmp_path / "chunks", {"side": "compressed", "weights": "x"})  # noqa: E731
    base_store = lambda: seq.ChunkStore(tmp_path / "chunks", {"side": "baseline", "weights": "y"})  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        seq.run_sequential(None, None, task_objs, plan, cfg, evaluate=killed_after(2), store=store(),
                           base_store=base_store())
    calls.clear()
    _, again, info = seq.run_sequential(None, None, task_objs, plan, cfg, evaluate=evaluate, store=store(),
                                        base_store=base_store())
    assert len([c for c in calls if c[0] == "compressed"]) == chunks - 2  # only the chunks not done before the kill
    assert info == whole and again.equals(full)
