"""The release gate: thresholds on each task's headline summary row, global or per task. The run, the sweep and
the search all judge with :func:`evaluate_gate`; nothing else decides PASS.

``gate.on=point`` checks the estimates; ``gate.on=upper_ci`` checks the pessimistic end of each one's 95%
interval (the upper bound of flips and lost, Tango's lower bound of delta_acc, the bootstrap upper bound of KL),
so a pass says the limit holds with 95% confidence, not just on this sample. A value that cannot be measured
(NaN, e.g. KL of a diverged model, or an interval with ``eval.bootstrap=0``) fails a threshold set on it: a gate
that cannot see the damage must not pass it.

KL has one limit per scale: ``max_choice_kl_mean`` applies to multiple-choice tasks (choice KL over the raw
log-likelihoods), ``max_token_kl_mean`` to generative ones (token KL); a global key skips tasks of the other
scope, a per-task key of the wrong scope fails. Token KL from a top-k baseline reference
(``eval.token_kl_topk``) is known only to an interval [kl_mean, kl_mean_upper]; the gate takes its upper end:
``kl_mean_upper`` under ``point``, and the bootstrap bound plus the truncation slack (``kl_mean_upper`` minus
``kl_mean``) under ``upper_ci``. Docs with a non-finite log-prob on either side (``n_nonfinite``) fail the gate
once any limit is set, unless ``max_nonfinite`` allows their share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from flipbench.config import GATE_KEYS, GateConfig

MISSING_VIOLATION = 1e3  # how far a value that could not be measured (NaN) is taken to exceed its limit


@dataclass(frozen=True)
class Check:
    column: str  # summary column under gate.on=point
    sign: float  # the checked value is sign * column, which must stay <= the limit
    bound: str  # the column of the interval's pessimistic end, under gate.on=upper_ci
    scope: str | None = None  # KL scope the key applies to (choice | token); None: every task


CHECKS = {
    "max_flips": Check("flips", 1.0, "flips_ci_high"),
    "max_lost": Check("lost", 1.0, "lost_ci_high"),
    "max_acc_drop": Check("delta_acc", -1.0, "delta_acc_ci_low"),
    "max_choice_kl_mean": Check("kl_mean", 1.0, "kl_mean_ci_high", "choice"),
    "max_token_kl_mean": Check("kl_mean", 1.0, "kl_mean_ci_high", "token"),
    "max_nonfinite": Check("nonfinite_share", 1.0, "nonfinite_share"),  # observed, not estimated: same both ways
}
assert set(CHECKS) == set(GATE_KEYS)


def limits_for(task: str, gate: GateConfig) -> dict[str, float]:
    """The limits set on ``task``: the global ones, overridden by ``gate.per_task.<task>``."""
    limits = {key: getattr(gate, key) for key in GATE_KEYS if getattr(gate, key) is not None}
    limits.update(gate.per_task.get(task, {}))
    if limits and "max_nonfinite" not in limits:
        limits["max_nonfinite"] = 0.0  # a gate that is set never passes a model that diverged unnoticed
    return limits


def _truncation_slack(row) -> float:
    """How far the exact mean token KL may lie above the reported one (top-k reference); 0 when exact or unknown."""
    slack = float(row.get("kl_mean_upper", math.nan)) - float(row.get("kl_mean", math.nan))
    return slack if slack > 0 else 0.0


def _value(row, key: str, on: str) -> tuple[float, str]:
    """(checked value, what it is) of one limit on one headline row."""
    check = CHECKS[key]
    if key == "max_nonfinite":
        n = float(row.get("n", math.nan))
        share = float(row.get("n_nonfinite", math.nan)) / n if n > 0 else math.nan
        return share, "n_nonfinite / n"
    column = check.bound if on == "upper_ci" else check.column
    value = check.sign * float(row.get(column, math.nan))
    column = f"-{column}" if check.sign < 0 else column  # what the value is: the drop, -delta_acc
    if check.scope == "token" and _truncation_slack(row) > 0:
        if on == "upper_ci":
            return value + _truncation_slack(row), f"{column} + (kl_mean_upper - kl_mean)"
        return float(row["kl_mean_upper"]), "kl_mean_upper"
    return value, column


def check_row(row, limits: dict[str, float], on: str, explicit: frozenset = frozenset()) -> list[dict]:
    """The checks of one headline summary row: [{check, column, value, limit, pass}, ...]. ``explicit``: keys set
    for this task by name (a KL key of the other scope fails there instead of being skipped)."""
    checks = []
    scope = str(row.get("kl_scope", ""))
    for key, limit in limits.items():
        wanted = CHECKS[key].scope
        if wanted is not None and wanted != scope:
            if key in explicit:
                checks.append({"check": key, "column": f"n/a ({row['task']} has {scope}-level KL)",
                               "value": math.nan, "limit": float(limit), "pass": False})
            continue
        value, column = _value(row, key, on)
        ok = not math.isnan(value) and value <= limit
        checks.append({"check": key, "column": column, "value": value, "limit": float(limit), "pass": ok})
    return checks


def evaluate_gate(summary: pd.DataFrame, gate: GateConfig, on: str | None = None) -> dict:
    """{"verdict": PASS | FAIL | "not set", "on": point | upper_ci, "tasks": [{task, metric, verdict, checks}, ...]}.

    Judges each task's headline whole-task row; ``on`` overrides ``gate.on`` (the search's stricter rungs)."""
    on = on or gate.on
    headline = summary[summary["headline"].astype(bool) & (summary["group"] == "all")]
    tasks, any_limit, failed = [], False, False
    for _, row in headline.iterrows():
        limits = limits_for(row["task"], gate)
        checks = check_row(row, limits, on, frozenset(gate.per_task.get(row["task"], {})))
        any_limit |= bool(limits)
        task_failed = any(not c["pass"] for c in checks)
        failed |= task_failed
        verdict = "FAIL" if task_failed else ("PASS" if checks else "not set")
        tasks.append({"task": row["task"], "metric": row["metric"], "verdict": verdict, "checks": checks})
    verdict = "FAIL" if failed else ("PASS" if any_limit else "not set")
    return {"verdict": verdict, "on": on, "tasks": tasks}


def worst_excess(verdict: dict) -> float:
    """The largest excess of a checked value over its limit, relative to the limit (<= 0: every check passes;
    an unmeasurable value counts as MISSING_VIOLATION); 0 when nothing was checked. The search ranks near misses
    by it."""
    worst = -math.inf
    for task in verdict["tasks"]:
        for check in task["checks"]:
            value, limit = check["value"], check["limit"]
            excess = MISSING_VIOLATION if math.isnan(value) else (value - limit) / (abs(limit) + 1e-3)
            worst = max(worst, excess)
    return 0.0 if worst == -math.inf else worst
