"""The release gate: thresholds on each task's headline summary row, global or per task.

``gate.on=point`` checks the estimates; ``gate.on=upper_ci`` checks the pessimistic end of each one's 95%
interval (the upper bound of flips, lost and KL, the lower bound of delta_acc), so a pass says the limit holds
with 95% confidence, not just on this sample. A value that cannot be measured (NaN, e.g. KL of a diverged
model, or an interval with ``eval.bootstrap=0``) fails a threshold set on it: a gate that cannot see the
damage must not pass it. Token KL from a top-k baseline reference (``eval.token_kl_topk``) is a lower bound
of the exact KL; under ``upper_ci`` the KL check adds the reference's truncation slack (``kl_mean_upper`` minus
``kl_mean``, 0 when the reference was exact) to the interval's upper end, so the pessimistic end stays one.
"""

from __future__ import annotations

import math

import pandas as pd

from flipbench.config import GATE_KEYS, GateConfig

# gate key -> (summary column, sign, column under gate.on=upper_ci): the checked value is sign * column,
# which must stay <= the limit.
CHECKS = {"max_flips": ("flips", 1.0, "flips_ci_high"), "max_lost": ("lost", 1.0, "lost_ci_high"),
          "max_acc_drop": ("delta_acc", -1.0, "delta_acc_ci_low"), "max_kl_mean": ("kl_mean", 1.0, "kl_mean_ci_high")}


def limits_for(task: str, gate: GateConfig) -> dict[str, float]:
    limits = {key: getattr(gate, key) for key in GATE_KEYS if getattr(gate, key) is not None}
    limits.update(gate.per_task.get(task, {}))
    return limits


def _truncation_slack(row) -> float:
    """How far the exact mean token KL may lie above the reported one (top-k reference); 0 when exact or unknown."""
    slack = float(row.get("kl_mean_upper", math.nan)) - float(row.get("kl_mean", math.nan))
    return slack if slack > 0 else 0.0


def evaluate_gate(summary: pd.DataFrame, gate: GateConfig) -> dict:
    """{"verdict": PASS | FAIL | "not set", "on": point | upper_ci, "tasks": [{task, verdict, checks: [...]}, ...]}."""
    headline = summary[summary["headline"] & (summary["group"] == "all")]
    tasks, any_limit, failed = [], False, False
    for _, row in headline.iterrows():
        limits = limits_for(row["task"], gate)
        checks = []
        for key, limit in limits.items():
            column, sign, bound = CHECKS[key]
            column = bound if gate.on == "upper_ci" else column
            value = sign * float(row.get(column, math.nan))
            slack = _truncation_slack(row) if key == "max_kl_mean" and gate.on == "upper_ci" else 0.0
            if slack > 0:
                value += slack
                column = f"{column} + (kl_mean_upper - kl_mean)"
            ok = not math.isnan(value) and value <= limit
            checks.append({"check": key, "column": column, "value": value, "limit": float(limit), "pass": ok})
        any_limit |= bool(limits)
        task_failed = any(not c["pass"] for c in checks)
        failed |= task_failed
        verdict = "FAIL" if task_failed else ("PASS" if checks else "not set")
        tasks.append({"task": row["task"], "metric": row["metric"], "verdict": verdict, "checks": checks})
    verdict = "FAIL" if failed else ("PASS" if any_limit else "not set")
    return {"verdict": verdict, "on": gate.on, "tasks": tasks}
