"""Release gate verdicts on a hand-made summary table: one gate function for run, sweep and search."""

import math

import numpy as np
import pandas as pd
import pytest

from flipbench.config import ConfigError, FlipbenchConfig, GateConfig, validate
from flipbench.gate import evaluate_gate, worst_excess
from flipbench.search import study


def summary():
    """Tasks a (multiple choice) and b (generative); b has an unmeasurable KL. Rows 2 and 4 are not headlines."""
    return pd.DataFrame({
        "task": ["a", "a", "b", "b"], "group": ["all", "all", "all", "x"], "metric": ["acc", "acc_norm", "acc", "acc"],
        "headline": [True, False, True, True], "n": [100, 100, 50, 10], "n_nonfinite": [0, 0, 0, 0],
        "kl_scope": ["choice", "choice", "token", "token"],
        "flips": [0.04, 0.5, 0.12, 0.9], "lost": [0.03, 0.5, 0.08, 0.9],
        "delta_acc": [-0.02, -0.5, -0.04, -0.9], "kl_mean": [0.01, 9.0, math.nan, 9.0],
    })


def summary_with_intervals():
    return summary().assign(flips_ci_high=[0.07, 0.6, 0.2, 0.95], lost_ci_high=[0.05, 0.6, 0.12, 0.95],
                            delta_acc_ci_low=[-0.045, -0.6, -0.08, -0.95], kl_mean_ci_high=[0.03, 9.5, math.nan, 9.5])


def test_no_thresholds_means_not_set():
    assert evaluate_gate(summary(), GateConfig())["verdict"] == "not set"


def test_global_threshold_checks_headline_whole_task_rows_only():
    result = evaluate_gate(summary(), GateConfig(max_flips=0.05))
    by_task = {t["task"]: t["verdict"] for t in result["tasks"]}
    # a: 0.04 <= 0.05 passes (its acc_norm row at 0.5 is not the headline); b: 0.12 > 0.05 fails.
    assert by_task == {"a": "PASS", "b": "FAIL"}
    assert result["verdict"] == "FAIL"


def test_acc_drop_is_the_negated_delta():
    result = evaluate_gate(summary(), GateConfig(max_acc_drop=0.03))
    checks = {t["task"]: t["checks"][0] for t in result["tasks"]}
    assert checks["a"]["value"] == 0.02 and checks["a"]["pass"]
    assert checks["b"]["value"] == 0.04 and not checks["b"]["pass"]


def test_kl_limits_apply_to_their_own_scope_and_unmeasurable_kl_fails():
    """max_choice_kl_mean judges the multiple-choice task only, max_token_kl_mean the generative one (NaN: FAIL)."""
    choice = evaluate_gate(summary(), GateConfig(max_choice_kl_mean=0.02))
    assert [(t["task"], t["verdict"]) for t in choice["tasks"]] == [("a", "PASS"), ("b", "PASS")]
    assert [c["check"] for c in choice["tasks"][1]["checks"]] == ["max_nonfinite"]  # no KL check on b
    token = evaluate_gate(summary(), GateConfig(max_token_kl_mean=1.0))
    assert [(t["task"], t["verdict"]) for t in token["tasks"]] == [("a", "PASS"), ("b", "FAIL")]
    gate = GateConfig(max_flips=0.05, per_task={"b": {"max_flips": 0.2}})
    assert evaluate_gate(summary(), gate)["verdict"] == "PASS"


def test_a_per_task_kl_key_of_the_other_scope_fails():
    result = evaluate_gate(summary(), GateConfig(per_task={"a": {"max_token_kl_mean": 1.0}}))
    check = result["tasks"][0]["checks"][0]
    assert not check["pass"] and "choice-level KL" in check["column"]


@pytest.mark.parametrize("old", [{"max_kl_mean": 0.1}, {"per_task": {"a": {"max_kl_mean": 0.1}}}])
def test_the_retired_kl_key_is_refused_with_the_new_names(old):
    with pytest.raises(ConfigError, match="max_kl_mean is retired.*gate.max_choice_kl_mean.*gate.max_token_kl_mean"):
        validate(FlipbenchConfig(gate=GateConfig(**old)))


@pytest.mark.parametrize("n_nonfinite, allowed, verdict", [(0, None, "PASS"), (1, None, "FAIL"), (1, 0.01, "PASS"),
                                                            (2, 0.01, "FAIL")])
def test_non_finite_docs_fail_a_set_gate_unless_allowed(n_nonfinite, allowed, verdict):
    """Issue 23, case 5: a diverged doc used to be dropped from the KL statistics and never gated."""
    rows = summary().assign(n_nonfinite=[n_nonfinite, 0, 0, 0])
    result = evaluate_gate(rows, GateConfig(max_flips=0.5, max_nonfinite=allowed))
    assert result["tasks"][0]["verdict"] == verdict
    check = result["tasks"][0]["checks"][-1]
    assert check["check"] == "max_nonfinite" and check["value"] == n_nonfinite / 100
    assert evaluate_gate(rows, GateConfig())["verdict"] == "not set"  # no limit: nothing is judged


@pytest.mark.parametrize("key, limit, point, upper", [
    # task a: flips 0.04 (upper bound 0.07), lost 0.03 (0.05), delta_acc -0.02 (lower bound -0.045), kl 0.01 (0.03)
    ("max_flips", 0.05, "PASS", "FAIL"),
    ("max_flips", 0.08, "PASS", "PASS"),
    ("max_lost", 0.04, "PASS", "FAIL"),
    ("max_acc_drop", 0.03, "PASS", "FAIL"),  # upper_ci checks -delta_acc_ci_low = 0.045
    ("max_choice_kl_mean", 0.02, "PASS", "FAIL"),
])
def test_upper_ci_checks_the_pessimistic_bound(key, limit, point, upper):
    gate = {key: limit}
    rows = summary_with_intervals()
    at_point = evaluate_gate(rows, GateConfig(**gate))
    at_upper = evaluate_gate(rows, GateConfig(**gate, on="upper_ci"))
    assert at_point["on"] == "point" and at_upper["on"] == "upper_ci"
    assert at_point["tasks"][0]["verdict"] == point and at_upper["tasks"][0]["verdict"] == upper
    assert at_upper["tasks"][0]["checks"][0]["column"].endswith(("_ci_high", "_ci_low"))


def test_upper_ci_without_intervals_fails():
    result = evaluate_gate(summary(), GateConfig(max_flips=0.5, on="upper_ci"))
    assert result["verdict"] == "FAIL"


def token_rows(kl_mean_upper: float):
    """Task a as a generative task: token KL 0.01 with bootstrap upper end 0.03; a top-k reference puts the exact
    mean KL at most at ``kl_mean_upper``."""
    rows = summary_with_intervals().assign(kl_scope="token")
    return rows.assign(kl_mean_upper=[kl_mean_upper, math.nan, math.nan, math.nan])


def test_token_kl_from_a_top_k_reference_is_judged_on_its_upper_end():
    """Issue 23, case 7: point judges kl_mean_upper (0.025), not the lower end 0.01; upper_ci the bootstrap bound
    plus the truncation slack, 0.03 + (0.025 - 0.01) = 0.045. An exact reference (upper == mean) adds nothing."""
    rows = token_rows(0.025)
    point = evaluate_gate(rows, GateConfig(max_token_kl_mean=0.02))["tasks"][0]["checks"][0]
    assert point["value"] == 0.025 and point["column"] == "kl_mean_upper" and not point["pass"]
    check = evaluate_gate(rows, GateConfig(max_token_kl_mean=0.04, on="upper_ci"))["tasks"][0]["checks"][0]
    assert check["value"] == pytest.approx(0.045) and not check["pass"]
    assert evaluate_gate(rows, GateConfig(max_token_kl_mean=0.05, on="upper_ci"))["tasks"][0]["verdict"] == "PASS"
    exact = token_rows(0.01)
    assert evaluate_gate(exact, GateConfig(max_token_kl_mean=0.04, on="upper_ci"))["tasks"][0]["checks"][0]["value"] == 0.03
    assert evaluate_gate(exact, GateConfig(max_token_kl_mean=0.02))["tasks"][0]["checks"][0]["value"] == 0.01


def test_the_search_judges_with_the_gate_itself():
    """Issue 23, case 3: kl_mean_ci_high 0.03 + top-k slack 0.015 = 0.045 > limit 0.04: the gate fails, and the
    search, which used to leave the slack out and pass, fails with it."""
    rows = token_rows(0.025).iloc[:2]  # task a only
    gate = GateConfig(max_token_kl_mean=0.04, on="upper_ci")
    assert evaluate_gate(rows, gate)["verdict"] == "FAIL"
    passes, violation = study.judge(rows, gate, upper=True)
    assert not passes and violation == pytest.approx((0.045 - 0.04) / 0.041)


def test_search_pass_implies_gate_pass():
    """On random headline rows and gates, a full-fidelity search pass (upper when the search or the gate asks for
    it) is never looser than the gate's verdict on the same summary."""
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(5, 200))
        flips = rng.uniform(0, 0.3, 2)
        rows = pd.DataFrame({
            "task": ["a", "b"], "group": "all", "metric": "acc", "headline": True, "n": n,
            "n_nonfinite": rng.integers(0, 2, 2), "kl_scope": ["choice", "token"],
            "flips": flips, "flips_ci_high": flips + rng.uniform(0, 0.1, 2), "lost": flips / 2,
            "lost_ci_high": flips / 2 + 0.05, "delta_acc": -flips / 3, "delta_acc_ci_low": -flips / 3 - 0.05,
            "kl_mean": rng.uniform(0, 0.1, 2), "kl_mean_ci_high": rng.uniform(0.1, 0.2, 2),
            "kl_mean_upper": [math.nan, rng.uniform(0, 0.3)]})
        gate = GateConfig(max_flips=float(rng.uniform(0, 0.4)), max_token_kl_mean=float(rng.uniform(0, 0.4)),
                          max_choice_kl_mean=float(rng.uniform(0, 0.3)), on=str(rng.choice(["point", "upper_ci"])),
                          max_nonfinite=float(rng.choice([0.0, 0.05])))
        for upper_bound in (False, True):
            ctx = study.Context.__new__(study.Context)
            ctx.gate, ctx.upper_bound = gate, upper_bound
            passes, _ = study.judge(rows, gate, ctx.upper(final=True))
            if passes:
                assert evaluate_gate(rows, gate)["verdict"] == "PASS", (trial, upper_bound)


def test_worst_excess_is_relative_and_missing_counts_large():
    verdict = evaluate_gate(summary(), GateConfig(max_flips=0.1, max_token_kl_mean=1.0))
    assert worst_excess(verdict) == 1e3  # task b's KL is NaN
    verdict = evaluate_gate(summary(), GateConfig(max_flips=0.1))
    assert worst_excess(verdict) == pytest.approx((0.12 - 0.1) / 0.101)
