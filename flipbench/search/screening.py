"""Screening rungs judged on confidence bounds for the whole benchmark, so that screening drops only configurations
that violate a limit with confidence.

A screening rung evaluates a seeded random share of every task's docs (``suite.sample``: the prefix of the sequential
gate's order, stratified over subjects unless ``gate.stratify=false``, :mod:`flipbench.subsample`), so the rung's x
lost (gained, flipped) docs of n are a random sample without replacement from the task's N docs. For every proportion limit (max_flips, max_lost, max_acc_drop) the exact
hypergeometric bounds of :mod:`flipbench.sequential` bound the value the full-fidelity run will measure on all N docs.
A configuration is dropped at a rung only when some limit's lower bound lies above it.

Error budget (union bound): each bound is taken at a = alpha / (screening rungs x checks), checks summed over tasks
(one per proportion limit of each task), alpha = ``gate.alpha``. A configuration whose full-benchmark values meet
every proportion limit is then dropped at some rung of its trial with probability <= alpha. KL limits (means of
unbounded values) have no such bound: screening never drops on them; full fidelity judges them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from flipbench.config import GateConfig
from flipbench.gate import limits_for
from flipbench.sequential import PROPORTION_CHECKS, bounds

# check -> the trials.csv column stem of its bounds
BOUND_COLUMNS = {"max_flips": "flips", "max_lost": "lost", "max_acc_drop": "acc_drop"}


def n_checks(tasks: list[str], gate: GateConfig) -> int:
    """Proportion limits summed over the tasks: the checks the screening budget is split over."""
    return sum(sum(key in PROPORTION_CHECKS for key in limits_for(task, gate)) for task in tasks)


def alpha_per_check(alpha: float, screening_rungs: int, checks: int) -> float:
    """Bonferroni share of one check of one task at one screening rung."""
    return alpha / (max(screening_rungs, 1) * max(checks, 1))


def counts(row) -> dict:
    """{lost, gained, flips} doc counts of a summary row (its shares times its n)."""
    n = int(row["n"])
    lost, gained = int(round(float(row["lost"]) * n)), int(round(float(row["gained"]) * n))
    return {"lost": lost, "gained": gained, "flips": lost + gained}


@dataclass
class Screen:
    decision: str  # "drop": some limit is violated with confidence; "promote": the bounds leave every limit possible
    violation: float  # the largest excess of a lower bound over its limit, relative to the limit (<= 0: none)
    tasks: dict = field(default_factory=dict)  # task -> {bound columns, available}


def screen(rows: pd.DataFrame, gate: GateConfig, available: dict[str, int], a: float) -> Screen:
    """Judge one screening rung from its headline summary rows (n docs of the task's ``available`` N)."""
    worst, tasks = float("-inf"), {}
    for _, row in rows.iterrows():
        task, n = row["task"], int(row["n"])
        N = int(available.get(task, n))
        if n == 0 or N == 0:
            continue
        bnds = bounds(counts(row), n, N, a)
        tasks[task] = {"available": N} | {f"{stem}_{end}": bnds[key][i] for key, stem in BOUND_COLUMNS.items()
                                          for i, end in enumerate(("lower", "upper"))}
        for key, limit in limits_for(task, gate).items():
            if key in PROPORTION_CHECKS:
                worst = max(worst, (bnds[key][0] - limit) / (abs(limit) + 1e-3))
    violation = 0.0 if worst == float("-inf") else worst
    return Screen("drop" if violation > 0 else "promote", violation, tasks)
