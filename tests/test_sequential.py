"""Sequential gate (flipbench/sequential.py): exact without-replacement bounds, error rate under stopping at every
look (numpy simulation), determinism."""

import numpy as np
import pytest
from scipy.stats import hypergeom

from flipbench import sequential as seq


def test_bounds_small_cases_by_hand():
    # N=10, n=5, x=0, a=0.05: P_K(X=0) = C(10-K,5)/C(10,5); K=1: 0.5, K=2: 0.2222, K=3: 0.0833, K=4: 0.0238
    assert seq.count_upper(0, 5, 10, 0.05) == 3
    assert seq.count_lower(0, 5, 10, 0.05) == 0
    # symmetric: x = n -> lower bound 10 - 3
    assert seq.count_lower(5, 5, 10, 0.05) == 7
    # x=1 of n=2 from N=4: P_K(X<=1) = 1 for K<=2, 5/6 for K=3 (> 0.05), 0 for K=4 -> U = 3; by symmetry L = 1
    assert seq.count_upper(1, 2, 4, 0.05) == 3 and seq.count_lower(1, 2, 4, 0.05) == 1
    # a = 0.1: K=3 gives 0.0833 <= 0.1 -> U = 2
    assert seq.count_upper(0, 5, 10, 0.1) == 2


@pytest.mark.parametrize("N,x", [(1, 0), (1, 1), (37, 0), (37, 5), (200, 200), (200, 13)])
def test_bound_at_full_population_is_exact(N, x):
    assert seq.count_upper(x, N, N, 1e-6) == x == seq.count_lower(x, N, N, 1e-6)
    b = seq.bounds({"lost": x, "gained": 0, "flips": x}, N, N, 1e-6)
    assert b["max_flips"] == (x / N, x / N) and b["max_acc_drop"] == (x / N, x / N)


def test_upper_bound_coverage_matches_definition():
    N, n, K, a = 60, 20, 15, 0.05
    xs = np.arange(0, n + 1)
    miss = sum(hypergeom.pmf(x, N, K, n) for x in xs if seq.count_upper(int(x), n, N, a) < K)
    assert miss <= a


def _tables(N, plan, a):
    """look -> arrays upper[x], lower[x] of the count bounds for x = 0..n."""
    return {n: (np.array([seq.count_upper(x, n, N, a) for x in range(n + 1)]),
                np.array([seq.count_lower(x, n, N, a) for x in range(n + 1)])) for n in plan}


@pytest.mark.parametrize("N,K,limit", [(200, 10, 0.05), (200, 11, 0.05), (120, 6, 0.05),
                                       *(pytest.param(*case, marks=pytest.mark.slow)  # larger N, the same check
                                         for case in [(200, 20, 0.10), (500, 30, 0.05), (500, 20, 0.05), (600, 36, 0.05)])])
def test_simulated_wrong_decision_rate_below_alpha(N, K, limit):
    """10,000 random orders of a population with K positives; stop at the first decided look (every chunk): a PASS
    when K/N > limit or a FAIL when K/N <= limit is wrong. The rate must stay <= alpha; at n = N the decision is
    the exact one."""
    alpha, streams = 0.05, 10_000
    chunk = seq.chunk_size(N, None)
    plan = seq.looks(N, chunk)
    a = seq.alpha_per_look(alpha, len(plan), 1)
    tables = _tables(N, plan, a)
    rng = np.random.default_rng(N * 7919 + K)
    pop = np.zeros(N, dtype=np.int64)
    pop[:K] = 1
    orders = rng.permuted(np.broadcast_to(pop, (streams, N)), axis=1)
    cums = np.cumsum(orders, axis=1)
    decided = np.full(streams, "", dtype=object)
    for n in plan:
        x = cums[:, n - 1]
        upper, lower = tables[n][0][x] / N, tables[n][1][x] / N
        open_ = decided == ""
        decided[open_ & (lower > limit)] = "FAIL"
        decided[open_ & (lower <= limit) & (upper <= limit)] = "PASS"
    assert (decided != "").all()  # the last look decides every stream
    truth = "PASS" if K / N <= limit else "FAIL"
    wrong = (decided != truth).mean()
    assert wrong <= alpha, (wrong, truth)
    # the last look's bounds are the exact population value
    assert tables[N][0][K] == K == tables[N][1][K]


def test_simulated_acc_drop_two_sided_counts():
    """lost and gained docs in one population: the drop's bounds (Bonferroni of two count bounds) decide rightly
    with rate >= 1 - alpha, stopping at every look."""
    N, lost, gained, limit, alpha, streams = 300, 24, 12, 0.05, 0.05, 10_000  # drop = 0.04 <= limit: PASS is right
    plan = seq.looks(N, 50)
    a = seq.alpha_per_look(alpha, len(plan), 1)
    rng = np.random.default_rng(3)
    pop = np.zeros(N, dtype=np.int64)
    pop[:lost], pop[lost:lost + gained] = 1, 2
    orders = rng.permuted(np.broadcast_to(pop, (streams, N)), axis=1)
    cl, cg = np.cumsum(orders == 1, axis=1), np.cumsum(orders == 2, axis=1)
    tabs = {n: {s: ([seq.count_upper(x, n, N, a / 2) for x in range(n + 1)],
                    [seq.count_lower(x, n, N, a / 2) for x in range(n + 1)]) for s in (0,)} for n in plan}
    wrong = np.zeros(streams, dtype=bool)
    open_ = np.ones(streams, dtype=bool)
    for n in plan:
        up, lo = (np.array(t) for t in tabs[n][0])
        xl, xg = cl[:, n - 1], cg[:, n - 1]
        upper, lower = (up[xl] - lo[xg]) / N, (lo[xl] - up[xg]) / N
        wrong |= open_ & (lower > limit)
        open_ &= ~((lower > limit) | (upper <= limit))
    assert not open_.any() and wrong.mean() <= alpha


def test_order_is_deterministic_for_a_seed_and_input_order():
    units = [("leaf_a", i) for i in range(30)] + [("leaf_b", i) for i in range(20)]
    one = seq.doc_order(units, 1234, "mmlu")
    assert one == seq.doc_order(list(reversed(units)), 1234, "mmlu")
    assert sorted(one) == sorted(units)
    assert one != seq.doc_order(units, 1235, "mmlu") and one != seq.doc_order(units, 1234, "arc")


def test_decide_rules():
    b = {"max_flips": (0.01, 0.04), "max_lost": (0.0, 0.03), "max_acc_drop": (-0.01, 0.02)}
    assert seq.decide({"max_flips": 0.05}, b, False)[0] == "PASS"
    assert seq.decide({"max_flips": 0.005}, b, False)[0] == "FAIL"
    assert seq.decide({"max_flips": 0.03}, b, False)[0] == "undecided"
    kl = {**b, "max_choice_kl_mean": (0.02, 0.08)}
    assert seq.decide({"max_flips": 0.05, "max_choice_kl_mean": 0.1}, kl, False)[0] == "PASS"  # clipped mean bound
    assert seq.decide({"max_flips": 0.05, "max_choice_kl_mean": 0.01}, kl, False)[0] == "FAIL"
    assert seq.decide({"max_flips": 0.05, "max_choice_kl_mean": 0.05}, kl, False)[0] == "undecided"
    # every doc seen: the exact unclipped KL mean is the full gate's
    assert seq.decide({"max_flips": 0.05, "max_choice_kl_mean": 0.1}, kl, True)[0] == "full gate"
    # token KL has no sequential bound: never an early PASS, but an early FAIL on the proportions
    assert seq.decide({"max_flips": 0.05, "max_token_kl_mean": 0.1}, b, False)[0] == "undecided"
    assert seq.decide({"max_flips": 0.005, "max_token_kl_mean": 0.1}, b, False)[0] == "FAIL"
    assert seq.looks(105, 50) == [50, 100, 105] and seq.chunk_size(3000, None) == 300 and seq.chunk_size(40, None) == 40


@pytest.mark.parametrize("compression,limit", [
    pytest.param(["compression=none"], "gate.max_flips=0.05", marks=pytest.mark.slow),
    (["compression=rtn", "compression.bits=2"], "gate.max_flips=0.0"),
    pytest.param(["compression=rtn", "compression.bits=8"], "gate.max_flips=0.5 gate.max_choice_kl_mean=0.5",
                 marks=pytest.mark.slow)])
def test_end_to_end_sequential_verdict_equals_the_full_runs(random_llama, mini_tasks, tmp_path, compression, limit):
    import json

    from conftest import compose, mini_overrides
    from flipbench import pipeline

    base = mini_overrides(random_llama, mini_tasks, tmp_path / "results") + compression + limit.split()
    full = json.loads((pipeline.run(compose(base)) / "manifest.json").read_text())
    run_dir = pipeline.run(compose(base + ["gate.sequential=true", "gate.chunk=4"]))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    seq_info = manifest["sequential"]
    assert manifest["gate"]["verdict"] == full["gate"]["verdict"]
    # "full gate": every task ended on its last look with a KL limit, judged by the full gate on all its docs
    assert seq_info["verdict"] in (full["gate"]["verdict"], "full gate")
    for task in ("mini_mc", "mini_gen"):
        assert {"docs", "available", "decision", "bound"} <= set(seq_info[task])
    import pandas as pd

    samples = pd.read_parquet(run_dir / "samples.parquet")
    used = samples.drop_duplicates(["task", "group", "doc_id"]).groupby("task").size().to_dict()
    assert all(used.get(t, 0) == seq_info[t]["docs"] for t in ("mini_mc", "mini_gen") if seq_info[t]["docs"])
    assert "Sequential gate" in (run_dir / "report.md").read_text()
    if seq_info["mini_mc"]["decision"] == "full gate":  # only after the task's last doc
        assert seq_info["mini_mc"]["docs"] == seq_info["mini_mc"]["available"]


def test_sequential_needs_a_proportion_limit():
    from flipbench.config import ConfigError, FlipbenchConfig, validate

    cfg = FlipbenchConfig()
    cfg.gate.sequential = True
    cfg.gate.max_choice_kl_mean = 0.1
    with pytest.raises(ConfigError, match="gate.sequential=true needs a proportion limit"):
        validate(cfg)
    cfg.gate.max_flips = 0.05
    validate(cfg)
    cfg.gate.alpha = 1.5
    with pytest.raises(ConfigError, match="gate.alpha"):
        validate(cfg)


def _fake_setup(monkeypatch, flips: dict):
    """Two tasks of 400 docs (task 'bad' in two leaves), a fake engine whose compressed side is wrong on the doc ids
    in ``flips[leaf]``; returns (task_objs, plan, calls)."""
    import types

    import pandas as pd

    from flipbench import pairing

    task_objs = {leaf: types.SimpleNamespace(eval_docs=[{}] * n) for leaf, n in
                 (("good", 400), ("bad_a", 150), ("bad_b", 250))}
    plan = types.SimpleNamespace(reported={"bad_a": "bad", "bad_b": "bad"})
    calls = []

    def evaluate(model, tok, tasks, plan_, cfg, label, work, path, shard_ids):
        calls.append((label, {k: list(v) for k, v in shard_ids.items()}))
        rows = [dict(task=plan.reported.get(leaf, leaf), group=leaf, doc_id=i, filter="none",
                     correct=float(not (label == "compressed" and i in flips.get(leaf, ()))))
                for leaf, ids in shard_ids.items() for i in ids]
        return pd.DataFrame(rows)

    monkeypatch.setattr(pairing, "pair", lambda b, c: b.merge(c, on=["task", "group", "doc_id", "filter"],
                                                               suffixes=("_base", "_comp")))
    return task_objs, plan, calls, evaluate


@pytest.mark.parametrize("decide_all", [False, True])
def test_driver_stops_at_the_first_fail_and_is_deterministic(monkeypatch, decide_all):
    from flipbench.config import FlipbenchConfig

    flips = {"good": set(), "bad_a": set(range(0, 150, 4)), "bad_b": set(range(0, 250, 4))}  # bad: 25% flips
    task_objs, plan, calls, evaluate = _fake_setup(monkeypatch, flips)
    cfg = FlipbenchConfig()
    cfg.gate.sequential, cfg.gate.max_flips, cfg.gate.sequential_all = True, 0.05, decide_all
    runs = [seq.run_sequential(None, None, task_objs, plan, cfg, base_model=None, evaluate=evaluate) for _ in range(2)]
    (base, comp, info), (_, comp2, info2) = runs
    assert info == info2 and comp.equals(comp2)  # same seed, same chunks and decisions
    assert info["bad"]["decision"] == "FAIL" and info["verdict"] == "FAIL"
    assert info["bad"]["docs"] == 50 and info["bad"]["available"] == 400  # 25% flips: FAIL at the first look
    assert info["good"]["decision"] == ("PASS" if decide_all else "undecided")
    assert len(comp) == sum(t["docs"] for t in info.values() if isinstance(t, dict))
    assert {label for label, _ in calls} == {"compressed", "baseline"}  # no cached baseline: both sides per chunk
    cfg.eval.seed += 1
    _, comp3, _ = seq.run_sequential(None, None, task_objs, plan, cfg, evaluate=evaluate)
    assert not comp3[["group", "doc_id"]].equals(comp[["group", "doc_id"]])
