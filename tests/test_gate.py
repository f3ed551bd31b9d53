"""Release gate verdicts on a hand-made summary table."""

import math

import pandas as pd
import pytest

from flipbench.config import GateConfig
from flipbench.gate import evaluate_gate


def summary():
    return pd.DataFrame({
        "task": ["a", "a", "b", "b"], "group": ["all", "all", "all", "x"], "metric": ["acc", "acc_norm", "acc", "acc"],
        "headline": [True, False, True, True], "flips": [0.04, 0.5, 0.12, 0.9], "lost": [0.03, 0.5, 0.08, 0.9],
        "delta_acc": [-0.02, -0.5, -0.04, -0.9], "kl_mean": [0.01, 9.0, math.nan, 9.0],
    })


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


def test_per_task_override_and_unmeasurable_kl_fails():
    gate = GateConfig(max_flips=0.05, per_task={"b": {"max_flips": 0.2}})
    assert evaluate_gate(summary(), gate)["verdict"] == "PASS"
    result = evaluate_gate(summary(), GateConfig(max_kl_mean=1.0))
    assert {t["task"]: t["verdict"] for t in result["tasks"]} == {"a": "PASS", "b": "FAIL"}


def summary_with_intervals():
    return summary().assign(flips_ci_high=[0.07, 0.6, 0.2, 0.95], lost_ci_high=[0.05, 0.6, 0.12, 0.95],
                            delta_acc_ci_low=[-0.045, -0.6, -0.08, -0.95], kl_mean_ci_high=[0.03, 9.5, math.nan, 9.5])


@pytest.mark.parametrize("key, limit, point, upper", [
    # task a: flips 0.04 (upper bound 0.07), lost 0.03 (0.05), delta_acc -0.02 (lower bound -0.045), kl 0.01 (0.03)
    ("max_flips", 0.05, "PASS", "FAIL"),
    ("max_flips", 0.08, "PASS", "PASS"),
    ("max_lost", 0.04, "PASS", "FAIL"),
    ("max_acc_drop", 0.03, "PASS", "FAIL"),  # upper_ci checks -delta_acc_ci_low = 0.045
    ("max_kl_mean", 0.02, "PASS", "FAIL"),
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


def test_upper_ci_adds_the_top_k_truncation_slack_to_token_kl():
    # task a: kl 0.01, interval up to 0.03; a top-k reference puts the exact mean KL at most at 0.025, so the
    # pessimistic end is 0.03 + (0.025 - 0.01) = 0.045
    rows = summary_with_intervals().assign(kl_mean_upper=[0.025, math.nan, math.nan, math.nan])
    check = evaluate_gate(rows, GateConfig(max_kl_mean=0.04, on="upper_ci"))["tasks"][0]["checks"][0]
    assert check["value"] == pytest.approx(0.045) and not check["pass"]
    assert evaluate_gate(rows, GateConfig(max_kl_mean=0.05, on="upper_ci"))["tasks"][0]["verdict"] == "PASS"
    assert evaluate_gate(rows, GateConfig(max_kl_mean=0.02))["tasks"][0]["checks"][0]["value"] == 0.01  # point: as is
    exact = summary_with_intervals().assign(kl_mean_upper=[0.01, math.nan, math.nan, math.nan])  # exact reference
    assert evaluate_gate(exact, GateConfig(max_kl_mean=0.04, on="upper_ci"))["tasks"][0]["checks"][0]["value"] == 0.03
