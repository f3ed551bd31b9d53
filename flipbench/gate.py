"""The release gate: thresholds on each task's headline summary row, global or per task.

A value that cannot be measured (NaN, e.g. KL of a diverged model) fails a threshold set on it: a gate that
cannot see the damage must not pass it.
"""

from __future__ import annotations

import math

import pandas as pd

from flipbench.config import GATE_KEYS, GateConfig

# gate key -> (summary column, sign): the checked value is sign * column, which must stay <= the limit.
CHECKS = {"max_flips": ("flips", 1.0), "max_lost": ("lost", 1.0), "max_acc_drop": ("delta_acc", -1.0),
          "max_kl_mean": ("kl_mean", 1.0)}


def limits_for(task: str, gate: GateConfig) -> dict[str, float]:
    limits = {key: getattr(gate, key) for key in GATE_KEYS if getattr(gate, key) is not None}
    limits.update(gate.per_task.get(task, {}))
    return limits


def evaluate_gate(summary: pd.DataFrame, gate: GateConfig) -> dict:
    """{"verdict": PASS | FAIL | "not set", "tasks": [{task, verdict, checks: [...]}, ...]}."""
    headline = summary[summary["headline"] & (summary["group"] == "all")]
    tasks, any_limit, failed = [], False, False
    for _, row in headline.iterrows():
        limits = limits_for(row["task"], gate)
        checks = []
        for key, limit in limits.items():
            column, sign = CHECKS[key]
            value = sign * float(row[column])
            ok = not math.isnan(value) and value <= limit
            checks.append({"check": key, "column": column, "value": value, "limit": float(limit), "pass": ok})
        any_limit |= bool(limits)
        task_failed = any(not c["pass"] for c in checks)
        failed |= task_failed
        verdict = "FAIL" if task_failed else ("PASS" if checks else "not set")
        tasks.append({"task": row["task"], "metric": row["metric"], "verdict": verdict, "checks": checks})
    verdict = "FAIL" if failed else ("PASS" if any_limit else "not set")
    return {"verdict": verdict, "tasks": tasks}
