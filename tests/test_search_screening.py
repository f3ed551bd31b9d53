"""Search screening on confidence bounds (issue 26, item 3) and ranking with compression replicas (issue 27, item 2),
with hand-built summaries and tables: no model is loaded."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from flipbench.config import GateConfig
from flipbench.search import noise, outputs, screening, settings, study
from flipbench.search.space import Point
from flipbench.subsample import sample_ids, sample_size


def tail_at_least(x: int, n: int, N: int, K: int) -> float:
    """P(X >= x) for X ~ hypergeometric: n drawn without replacement from N holding K flipped (by hand)."""
    return sum(math.comb(K, j) * math.comb(N - K, n - j) for j in range(x, min(n, K) + 1)) / math.comb(N, n)


def reference_lower(x: int, n: int, N: int, a: float) -> int:
    """The exact lower confidence bound by its definition: the least K whose upper tail at x exceeds a."""
    return next(K for K in range(x, N + 1) if tail_at_least(x, n, N, K) > a)


def headline_rows(task_values: dict[str, tuple[int, int, int]]) -> pd.DataFrame:
    """Summary headline rows from {task: (n, lost docs, gained docs)}."""
    rows = []
    for task, (n, lost, gained) in task_values.items():
        rows.append({"task": task, "group": "all", "metric": "acc", "headline": True, "n": n, "n_nonfinite": 0,
                     "acc_base": 0.5, "acc_comp": 0.5 + (gained - lost) / n, "kl_mean_ci_low": 0.0,
                     "kl_scope": "choice", "flips": (lost + gained) / n, "flips_ci_low": 0.0, "flips_ci_high": 1.0,
                     "lost": lost / n, "gained": gained / n, "delta_acc": (gained - lost) / n, "delta_acc_ci_low": -1.0,
                     "delta_acc_ci_high": 1.0, "kl_mean": 0.0, "kl_mean_ci_high": 0.0})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the screening rule

def test_point_estimate_over_the_limit_is_not_dropped_when_the_bound_allows_a_pass():
    """N = 100 docs, a 25-doc screening sample, max_flips = 10%, one rung and one check: a = 0.05.
    4 flips of 25 is 16% > 10%, but P(X >= 4 | K = 10) = 0.21 > 0.05: ten flips in the whole task (a pass) explain
    the sample, so the lower bound is <= 10 and the configuration is promoted. 15 of 25 is a clear violation:
    P(X >= 15 | K = 10) < 1e-6, and the tail grows with K, so the lower bound is > 10: dropped."""
    gate = GateConfig(max_flips=0.10)
    a = screening.alpha_per_check(0.05, 1, screening.n_checks(["t"], gate))
    assert a == 0.05
    assert tail_at_least(4, 25, 100, 10) > 0.05 and tail_at_least(15, 25, 100, 10) < 1e-6
    near = screening.screen(headline_rows({"t": (25, 3, 1)}), gate, {"t": 100}, a)
    assert near.decision == "promote" and near.violation <= 0
    assert near.tasks["t"]["flips_lower"] == reference_lower(4, 25, 100, 0.05) / 100 <= 0.10
    far = screening.screen(headline_rows({"t": (25, 15, 0)}), gate, {"t": 100}, a)
    lower = reference_lower(15, 25, 100, 0.05)
    assert far.decision == "drop" and far.tasks["t"]["flips_lower"] == lower / 100 > 0.10
    assert far.violation == pytest.approx((lower / 100 - 0.10) / 0.101)


def test_budget_split_over_rungs_tasks_and_checks():
    gate = GateConfig(max_flips=0.1, max_choice_kl_mean=0.5, per_task={"b": {"max_lost": 0.05}})
    # task a: max_flips; task b: max_flips and max_lost; KL limits are not bounded, so not counted
    assert screening.n_checks(["a", "b"], gate) == 3
    assert screening.alpha_per_check(0.05, 2, 3) == pytest.approx(0.05 / 6)


def test_a_fully_evaluated_task_is_judged_exactly():
    """A screening share can cover a small task whole: then the bounds are the exact counts."""
    result = screening.screen(headline_rows({"t": (20, 2, 1)}), GateConfig(max_flips=0.1), {"t": 20}, 0.01)
    assert result.tasks["t"]["flips_lower"] == result.tasks["t"]["flips_upper"] == 3 / 20
    assert result.decision == "drop"


@pytest.mark.parametrize("N, limit, shares, alpha", [(400, 0.10, [0.25, 0.5], 0.05), (1000, 0.05, [0.1, 0.2, 0.4], 0.05),
                                                     (150, 0.2, [0.5], 0.1)])
def test_drop_rate_of_a_passing_configuration_stays_within_its_alpha(N, limit, shares, alpha):
    """10,000 random doc orders of a task whose flips are exactly at the limit (the hardest passing case): the share
    of orders in which screening drops it, at any rung, is <= alpha, and at each rung <= that rung's share of it."""
    gate = GateConfig(max_flips=limit)
    a = screening.alpha_per_check(alpha, len(shares), screening.n_checks(["t"], gate))
    K = int(round(limit * N))
    # the rule's verdict for every possible count at each rung (the simulation then only counts)
    def drops(n: int, x: int) -> bool:
        return screening.screen(headline_rows({"t": (n, x, 0)}), gate, {"t": N}, a).decision == "drop"

    first_drop = {}
    for share in shares:  # the least count that drops (more flips never look better): bisection
        n = sample_size(share, N)
        lo, hi = 0, n + 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if drops(n, mid) else (mid + 1, hi)
        first_drop[n] = lo
        assert lo == n + 1 or (drops(n, lo) and (lo == 0 or not drops(n, lo - 1)))
    rng = np.random.default_rng(0)
    streams = 10_000
    flipped = rng.permuted(np.tile(np.arange(N) < K, (streams, 1)), axis=1)  # each row: one seeded doc order
    dropped = np.zeros(streams, dtype=bool)
    slack = 3 * math.sqrt(a * (1 - a) / streams)
    for n, x_min in first_drop.items():
        at_rung = flipped[:, :n].sum(axis=1) >= x_min
        assert at_rung.mean() <= a + slack
        dropped |= at_rung
    assert dropped.mean() <= alpha
    # and the rule has power: three times the limit is dropped in nearly every order
    heavy = rng.permuted(np.tile(np.arange(N) < 3 * K, (1000, 1)), axis=1)
    n, x_min = max(first_drop.items())
    assert (heavy[:, :n].sum(axis=1) >= x_min).mean() > 0.9


# ---------------------------------------------------------------- the sample

def sample_setup(stratify: bool):
    """A two-leaf group (leaf g_a limited to 20 of its 30 docs, g_b 10 docs) and a one-leaf task of 12 docs whose
    subject field holds 8 "x" and 4 "y"; the config fields the sample reads."""
    tasks = {"g_a": SimpleNamespace(eval_docs=list(range(30))), "g_b": SimpleNamespace(eval_docs=list(range(10))),
             "solo": SimpleNamespace(eval_docs=[{"subject": "x" if i % 3 else "y"} for i in range(12)])}
    plan = SimpleNamespace(reported={"g_a": "group", "g_b": "group", "solo": "solo"})
    cfg = SimpleNamespace(suite=SimpleNamespace(limit=None, task_limits={"g_a": 20}, subject_field="subject"),
                          eval=SimpleNamespace(seed=7), gate=GateConfig(stratify=stratify))
    return tasks, plan, cfg


def test_sample_is_a_balanced_nested_prefix():
    """Stratified (the default): subjects are the group's leaves (20 and 10 docs) and the solo task's subject field
    (8 x, 4 y). With two subjects every prefix of n holds a subject of m docs in N within one doc of n m / N, so
    (by hand) a share of 0.25 holds 8 group docs, 5 or 6 of them from g_a (8 * 20/30 = 5.33), and 3 solo docs,
    2 or 3 of them x (3 * 8/12 = 2); all shares k/N nest and stay within the limit."""
    tasks, plan, cfg = sample_setup(stratify=True)
    quarter, info = sample_ids(tasks, plan, cfg, 0.25)
    assert info == {"group": {"docs": 8, "available": 30, "share": 0.25}, "solo": {"docs": 3, "available": 12, "share": 0.25}}
    assert len(quarter["g_a"]) in (5, 6) and len(quarter["g_a"]) + len(quarter.get("g_b", [])) == 8
    assert sum(1 for i in quarter["solo"] if i % 3) in (2, 3) and len(quarter["solo"]) == 3
    subjects = {"group": {"g_a": (lambda leaf, i: leaf == "g_a")}, "solo": {"x": (lambda leaf, i: i % 3 != 0)}}
    sizes = {"group": (30, 20), "solo": (12, 8)}
    before: dict = {}
    for task, (N, m) in sizes.items():
        (is_subject,) = subjects[task].values()
        for n in range(1, N + 1):
            ids, _ = sample_ids(tasks, plan, cfg, n / N)
            drawn = {(leaf, i) for leaf, v in ids.items() for i in v if plan.reported[leaf] == task}
            assert len(drawn) == n and drawn >= before.get(task, set())  # nested
            assert abs(sum(is_subject(*u) for u in drawn) - n * m / N) < 1
            assert all(i < 20 for leaf, i in drawn if leaf == "g_a")  # the limit holds
            before[task] = drawn


@pytest.mark.parametrize("stratify", [True, False])
def test_sample_is_the_prefix_of_the_gates_own_order(stratify):
    """The sample of a share is the first ceil(share N) docs of the order the sequential gate evaluates
    (sequential.task_states, as run_sequential builds it), stratified or not."""
    from flipbench.sequential import task_states

    tasks, plan, cfg = sample_setup(stratify)
    states, _ = task_states(tasks, plan, cfg)
    for share in (0.1, 0.25, 0.5, 1.0):
        ids, info = sample_ids(tasks, plan, cfg, share)
        for task, state in states.items():
            n = math.ceil(share * state.available - 1e-9)
            assert info[task]["docs"] == n and info[task]["available"] == state.available
            drawn = sorted((leaf, i) for leaf, v in ids.items() for i in v if plan.reported[leaf] == task)
            assert drawn == sorted(state.order[:n])


# ---------------------------------------------------------------- screening inside the Optuna study

def fake_rungs(values: dict[str, list[tuple[int, int]]]):
    """run_rung stand-in: writes a summary whose task t has (docs, flipped docs) as given per label and rung."""
    def run_rung(ctx, point, k):
        run_dir = ctx.search_dir / "trials" / point.label / ctx.rung_name(k)
        run_dir.mkdir(parents=True, exist_ok=True)
        n, x = values[point.label][k]
        headline_rows({"t": (n, x, 0)}).to_csv(run_dir / "summary.csv", index=False)
        return run_dir
    return run_rung


def search_context(tmp_path, skip_costlier=False) -> study.Context:
    points = {p.label: p for p in (Point("rtn", (("bits", b),)) for b in (2, 3, 4))}
    costs = {label: {"cost": float(p.get("bits")), "avg_bits": float(p.get("bits")), "model_bytes": 1, "in_budget": True}
             for label, p in points.items()}
    return study.Context(tmp_path, [], None, GateConfig(max_flips=0.10), False, points, costs, [0.25, 1.0], {"t": 100},
                         4, skip_costlier)


@pytest.mark.parametrize("pruner", ["successive_halving", pytest.param("hyperband", marks=pytest.mark.slow), "none"])
def test_study_drops_only_confident_violations(tmp_path, monkeypatch, pruner):
    """rtn-w2 (cheapest) passes; rtn-w3 flips 15 of 25 screening docs (a clear violation); rtn-w4 flips 4 of 25
    (16%, over the 10% limit on the point estimate, within the bound) and 8 of 100 at full fidelity (passes).
    Successive halving ranks w4 out at the first rung (w2 is cheaper and passing); it goes on all the same, and only
    w3 is dropped. Without a pruner nothing is dropped."""
    import optuna

    monkeypatch.setattr(study, "run_rung", fake_rungs({"rtn-w2": [(25, 1), (100, 2)], "rtn-w3": [(25, 15), (100, 60)],
                                                       "rtn-w4": [(25, 4), (100, 8)]}))
    ctx = search_context(tmp_path)
    opt = study.make_study(tmp_path, 0, "brute_force", pruner, ctx.eta, len(ctx.shares))
    for bits in (2, 3, 4):
        opt.enqueue_trial({"method": "rtn", "rtn.bits": bits})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opt.optimize(study.objective(ctx, {"rtn": {"bits": [2, 3, 4]}}), n_trials=3)
    states = {t.user_attrs["label"]: t.state.name for t in opt.get_trials()}
    expected_w3 = "COMPLETE" if pruner == "none" else "PRUNED"
    assert states == {"rtn-w2": "COMPLETE", "rtn-w3": expected_w3, "rtn-w4": "COMPLETE"}
    w4 = next(t for t in opt.get_trials() if t.user_attrs["label"] == "rtn-w4")
    assert w4.intermediate_values[1] == 4.0  # its cost: the bounds leave the limit possible (w2 reported 2.0)
    trials = outputs.trials_table(ctx, opt)
    screened = trials[trials["fidelity"] == 0.25].set_index("label")
    assert screened.loc["rtn-w4", "flips"] == 0.16 and screened.loc["rtn-w4", "screen"] == "promote"
    assert screened.loc["rtn-w4", "flips_lower"] <= 0.10 and screened.loc["rtn-w4", "available"] == 100
    assert screened.loc["rtn-w3", "screen"] == "drop" and screened.loc["rtn-w3", "flips_lower"] > 0.10
    if pruner != "successive_halving":
        return
    cfg = settings.SearchRootConfig()
    cfg.gate = ctx.gate
    rec = outputs.write(ctx, opt, cfg, settings.Budget(None, None), [])
    assert rec["label"] == "rtn-w2" and rec["screening"]["alpha_per_check"] == 0.05
    assert rec["screening"]["dropped"] == ([] if pruner == "none" else ["rtn-w3"])
    text = (tmp_path / "search_report.md").read_text()
    assert "dropped with probability <= 0.05" in text and "Ranking" in text


def test_the_pruner_still_promotes_a_near_miss(tmp_path, monkeypatch):
    """A confident violation that successive halving keeps (the first trial has no competitor) goes on to full
    fidelity, so a search where none passes can still name the closest configuration."""
    import optuna

    monkeypatch.setattr(study, "run_rung", fake_rungs({"rtn-w3": [(25, 15), (100, 60)]}))
    ctx = search_context(tmp_path)
    opt = study.make_study(tmp_path, 0, "brute_force", "successive_halving", ctx.eta, len(ctx.shares))
    opt.enqueue_trial({"method": "rtn", "rtn.bits": 3})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opt.optimize(study.objective(ctx, {"rtn": {"bits": [3]}}), n_trials=1)
    (trial,) = opt.get_trials()
    assert trial.state.name == "COMPLETE" and not trial.user_attrs["passes"]


# ---------------------------------------------------------------- ranking with compression replicas

def full_rows(ranges: dict[str, dict[str, tuple[float, float, float]]], costs: dict[str, float]) -> pd.DataFrame:
    """Full-fidelity trials.csv rows: label -> task -> (flips, replica min, replica max)."""
    rows = []
    for label, tasks in ranges.items():
        for task, (flips, lo, hi) in tasks.items():
            rows.append({"label": label, "task": task, "cost": costs[label], "avg_bits": costs[label], "model_gb": 0.1,
                         "full_fidelity": True, "fidelity": 1.0, "flips": flips, "flips_rep_min": lo,
                         "flips_rep_median": (lo + hi) / 2, "flips_rep_max": hi, "replicas": 3, "run": f"trials/{label}"})
    return pd.DataFrame(rows)


def test_overlapping_replica_ranges_are_not_distinguished():
    """A, B, C pass (costs 2, 3, 4), D fails (cost 1). A and B overlap on both tasks; C is apart from A and B on t1;
    D overlaps A on both tasks (t1: [0.09, 0.15] meets A's [0.05, 0.09] at 0.09; t2: [0, 0.022] meets [0.02, 0.03])
    but not B (t1: B's [0.07, 0.08] ends below 0.09)."""
    full = full_rows({"A": {"t1": (0.08, 0.05, 0.09), "t2": (0.02, 0.02, 0.03)},
                      "B": {"t1": (0.075, 0.07, 0.08), "t2": (0.03, 0.025, 0.04)},
                      "C": {"t1": (0.015, 0.01, 0.02), "t2": (0.005, 0.0, 0.01)},
                      "D": {"t1": (0.12, 0.09, 0.15), "t2": (0.01, 0.0, 0.022)}},
                     {"A": 2.0, "B": 3.0, "C": 4.0, "D": 1.0})
    configs = outputs.configurations(full)
    assert configs["label"].tolist() == ["D", "A", "B", "C"]  # by cost
    configs["passes"] = configs["label"] != "D"
    configs["violation"] = np.where(configs["passes"], 0.0, 0.2)
    ranked = noise.annotate(outputs.ranked(configs), full)
    assert ranked["label"].tolist() == ["A", "B", "C", "D"] and ranked["rank"].tolist() == [1, 2, 3, 4]
    assert ranked["not_distinguished_from"].tolist() == ["B;D", "A", "", "A"]
    assert ranked["distinguished_from_next"].tolist() == [False, True, True, ""]
    # the worst task's range travels with the configuration (A's worst task is t1)
    a = ranked.iloc[0]
    assert (a["worst_task"], a["worst_flips_rep_min"], a["worst_flips_rep_max"]) == ("t1", 0.05, 0.09)
    statement = noise.versus_runner_up(ranked, full)
    assert statement["runner_up"] == "B" and statement["distinguished_from_runner_up"] is False
    assert statement["not_distinguished_from"] == ["B", "D"] and statement["replicas"] == 3
    from flipbench.search.report import noise_line

    line = noise_line({"label": "A", "compression_noise": statement})[1]
    assert "Not distinguished by flips** from the next passing configuration, B" in line


def test_distinguished_runner_up_and_no_replicas():
    full = full_rows({"A": {"t": (0.02, 0.01, 0.03)}, "B": {"t": (0.10, 0.08, 0.12)}}, {"A": 2.0, "B": 3.0})
    configs = outputs.configurations(full)
    configs["passes"], configs["violation"] = True, 0.0
    ranked = noise.annotate(outputs.ranked(configs), full)
    assert noise.versus_runner_up(ranked, full)["distinguished_from_runner_up"] is True
    plain = full.drop(columns=noise.RANGE_COLUMNS)
    plain_configs = outputs.configurations(plain)
    plain_configs["passes"], plain_configs["violation"] = True, 0.0
    annotated = noise.annotate(outputs.ranked(plain_configs), plain)
    assert annotated["not_distinguished_from"].tolist() == ["", ""] and noise.versus_runner_up(annotated, plain) is None


def test_data_free_methods_have_their_one_value_as_range(tmp_path):
    ctx = search_context(tmp_path)
    ctx.noise = {"gptq-w2": ["compression.replicas=3"]}  # a replica search: RTN ran once
    row = pd.Series({"flips": 0.07})
    assert outputs._replica_range(ctx, "rtn-w2", row) == {"flips_rep_min": 0.07, "flips_rep_median": 0.07,
                                                          "flips_rep_max": 0.07, "replicas": 1}
    ctx.noise = {}
    assert all(math.isnan(v) for v in outputs._replica_range(ctx, "rtn-w2", row).values())
    json.dumps(outputs._replica_range(ctx, "rtn-w2", row))


@pytest.mark.parametrize("changes, words", [
    ({"sample": 0.0}, "suite.sample=0.0 must be a share"),
    ({"sample": 1.5}, "suite.sample=1.5 must be a share"),
    ({"sample": 0.5, "sequential": True}, "gate.sequential, compression.replicas and flipbench collect"),
    ({"sample": 0.5, "replicas": 2}, "gate.sequential, compression.replicas and flipbench collect"),
])
def test_bad_sample(changes, words):
    from flipbench.config import ConfigError, FlipbenchConfig, GptqConfig, validate

    cfg = FlipbenchConfig()
    cfg.compression = GptqConfig(replicas=changes.get("replicas", 1))
    cfg.suite.sample = changes["sample"]
    cfg.gate.sequential = changes.get("sequential", False)
    cfg.gate.max_flips = 0.1
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        validate(cfg)


def test_search_takes_replicas_but_not_other_compression_or_sample_keys():
    from flipbench.config import ConfigError
    from flipbench.search.driver import run_overrides

    assert run_overrides(["gate.max_flips=0.1", "compression.replicas=3", "search.id=x"]) == (
        ["gate.max_flips=0.1"], ["compression.replicas=3"])
    for bad in ("compression.bits=3", "suite.sample=0.5"):
        with pytest.raises(ConfigError):
            run_overrides([bad])
