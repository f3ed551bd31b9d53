"""Release gate verdicts on a hand-made summary table."""

import math

import pandas as pd

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
