"""Sequential gate: decide the gate's proportion checks on a prefix of each task's docs, with a guarantee about the
whole benchmark (docs/sequential.md).

Method (pre-planned looks, exact finite-population bounds, Bonferroni):
- each reported task's N docs (all its leaves' evaluated docs) are taken in one seeded uniformly random order (a
  simple random sample without replacement at every prefix), in chunks of ``c`` docs; the looks n = c, 2c, ..., N
  are fixed in advance by N and c, so a task has ``ceil(N / c)`` looks;
- after each look, for every proportion check (flips, lost: counts of docs over the population of N), exact
  one-sided hypergeometric confidence bounds for the population count K given x of n sampled: upper
  U = max{K : P_K(X <= x) > a}, lower L = min{K : P_K(X >= x) > a}; P(U < K) <= a and P(L > K) <= a at each look;
- the accuracy drop (lost - gained) is bounded by U_lost - L_gained (upper) and L_lost - U_gained (lower), each of the
  two bounds at a / 2 (Bonferroni), so the drop's bounds hold together with probability >= 1 - a;
- a = alpha / (looks of the task x checks of all tasks): by the union bound over looks, checks and tasks, the
  probability that any decision is wrong at any of the planned looks (so at whatever look the run stops) is <= alpha;
- decision per task: FAIL when some check's lower bound exceeds its limit; PASS when every check's upper bound is
  <= its limit (the full gate passes a value <= limit); undecided otherwise. At n = N the bounds equal the exact
  population counts, so the decision at the last look is the full run's verdict on those checks.
KL limits (means of unbounded values) are not bounded here: a task with a KL limit can FAIL early on its proportion
checks but PASSES only once all its docs are evaluated, where its KL check is the full run's.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import hypergeom

PROPORTION_CHECKS = ("max_flips", "max_lost", "max_acc_drop")
KL_CHECKS = ("max_choice_kl_mean", "max_token_kl_mean")


# ---------------------------------------------------------------- order and looks

def doc_order(units: list, seed: int, task: str) -> list:
    """``units`` (e.g. (leaf, doc_id) pairs) in a seeded uniformly random order, independent of the input order."""
    units = sorted(units)
    digest = int.from_bytes(hashlib.sha256(f"{seed}:{task}".encode()).digest()[:8], "little")
    perm = np.random.default_rng(digest).permutation(len(units))
    return [units[i] for i in perm]


def chunk_size(n_docs: int, chunk: int | None) -> int:
    """Docs per look: ``gate.chunk``, or 10% of the task's docs, at least 50 (never more than the task has)."""
    size = chunk if chunk is not None else max(50, math.ceil(n_docs / 10))
    return max(1, min(size, n_docs)) if n_docs else 1


def looks(n_docs: int, chunk: int) -> list[int]:
    """The pre-planned sample sizes: chunk, 2 chunk, ..., n_docs."""
    return sorted({min(k * chunk, n_docs) for k in range(1, math.ceil(n_docs / chunk) + 1)}) if n_docs else []


def alpha_per_look(alpha: float, n_looks: int, n_checks_total: int) -> float:
    """Bonferroni share of one check of one task at one look."""
    return alpha / (max(n_looks, 1) * max(n_checks_total, 1))


# ---------------------------------------------------------------- bounds

def count_upper(x: int, n: int, N: int, a: float) -> int:
    """Exact upper confidence bound (level 1 - a) for the population count K, x of n drawn without replacement."""
    ks = np.arange(x, N - (n - x) + 1)
    ok = ks[hypergeom.cdf(x, N, ks, n) > a]
    return int(ok.max()) if ok.size else x


def count_lower(x: int, n: int, N: int, a: float) -> int:
    """Exact lower confidence bound (level 1 - a) for the population count K."""
    ks = np.arange(x, N - (n - x) + 1)
    ok = ks[hypergeom.sf(x - 1, N, ks, n) > a]
    return int(ok.min()) if ok.size else x


def bounds(counts: dict, n: int, N: int, a: float) -> dict:
    """check -> (lower, upper) bound of its population value (a share of N) from the sample counts
    {lost, gained, flips} of n docs."""
    out = {}
    for key, name in (("max_flips", "flips"), ("max_lost", "lost")):
        x = int(counts[name])
        out[key] = (count_lower(x, n, N, a) / N, count_upper(x, n, N, a) / N)
    lost, gained = int(counts["lost"]), int(counts["gained"])
    upper = count_upper(lost, n, N, a / 2) - count_lower(gained, n, N, a / 2)
    lower = count_lower(lost, n, N, a / 2) - count_upper(gained, n, N, a / 2)
    out["max_acc_drop"] = (lower / N, upper / N)
    return out


def decide(limits: dict, bnds: dict, complete: bool, kl_pass: bool | None = None) -> tuple[str, dict]:
    """("PASS" | "FAIL" | "undecided", check -> {lower, upper, limit}) for one task's proportion limits.

    ``complete``: every doc evaluated (the bounds are exact); ``kl_pass``: the full-data KL checks' result when the
    task has KL limits (None: it has none), only used when complete."""
    checks = {key: {"lower": bnds[key][0], "upper": bnds[key][1], "limit": float(limit)}
              for key, limit in limits.items() if key in PROPORTION_CHECKS}
    if any(c["lower"] > c["limit"] for c in checks.values()):
        return "FAIL", checks
    if all(c["upper"] <= c["limit"] for c in checks.values()):
        if not any(key in KL_CHECKS for key in limits):
            return "PASS", checks
        if complete and kl_pass is not None:
            return ("PASS" if kl_pass else "FAIL"), checks
    return "undecided", checks


# ---------------------------------------------------------------- driver

@dataclass
class TaskState:
    task: str
    order: list  # (leaf, doc_id) in evaluation order
    chunk: int
    plan: list  # looks
    limits: dict
    n: int = 0
    decision: str = "undecided"
    checks: dict = field(default_factory=dict)

    @property
    def available(self) -> int:
        return len(self.order)


def headline_counts(paired) -> dict:
    """{n, lost, gained, flips} on the headline filter (the first listed of each task) of a paired frame."""
    rows = paired.drop_duplicates(["task", "group", "doc_id"], keep="first")
    b, c = rows["correct_base"].astype(float) >= 0.5, rows["correct_comp"].astype(float) >= 0.5
    lost, gained = int((b & ~c).sum()), int((~b & c).sum())
    return {"n": len(rows), "lost": lost, "gained": gained, "flips": lost + gained}


def run_sequential(comp_model, comp_tok, task_objs, plan, cfg, *, base=None, base_model=None, base_tok=None,
                   work=None, path=None, base_path=None, evaluate=None):
    """Evaluate the compressed side (and the baseline, unless ``base`` holds the full cached baseline) chunk by chunk
    until the gate is decided. Returns (base_frame, comp_frame, info) with the docs evaluated and
    info = {task: {docs, available, decision, bound, checks, chunk, looks}} plus "verdict"."""
    import pandas as pd

    from flipbench import gate as gate_mod
    from flipbench.pairing import pair
    from flipbench.side import evaluate_side, limits as doc_limits

    evaluate = evaluate or evaluate_side
    gate = cfg.gate
    counts = doc_limits(task_objs, plan, cfg)
    per_task: dict[str, list] = {}
    for leaf, task in task_objs.items():
        n = min(counts.get(leaf) or len(task.eval_docs), len(task.eval_docs))
        per_task.setdefault(plan.reported.get(leaf, leaf), []).extend((leaf, i) for i in range(n))
    states = {}
    for task, units in sorted(per_task.items()):
        limits = {k: v for k, v in gate_mod.limits_for(task, gate).items() if k in PROPORTION_CHECKS + KL_CHECKS}
        size = chunk_size(len(units), gate.chunk)
        states[task] = TaskState(task, doc_order(units, cfg.eval.seed, task), size, looks(len(units), size), limits)
    n_checks = sum(len([k for k in s.limits if k in PROPORTION_CHECKS]) for s in states.values())
    base_parts, comp_parts = [], []
    while True:
        active = [s for s in states.values() if s.decision == "undecided" and s.n < s.available]
        if not active:
            break
        ids: dict[str, list[int]] = {}
        for s in active:
            nxt = s.plan[s.plan.index(s.n) + 1] if s.n else s.plan[0]
            for leaf, i in s.order[s.n:nxt]:
                ids.setdefault(leaf, []).append(i)
            s.n = nxt
        ids = {leaf: sorted(v) for leaf, v in ids.items()}
        comp_chunk = evaluate(comp_model, comp_tok, task_objs, plan, cfg, label="compressed", work=None, path=path,
                              shard_ids=ids)
        if base is not None:
            keys = comp_chunk[["task", "group", "doc_id"]].drop_duplicates()
            base_chunk = base.merge(keys, on=["task", "group", "doc_id"], how="inner")
        else:
            base_chunk = evaluate(base_model, base_tok, task_objs, plan, cfg, label="baseline", work=None,
                                  path=base_path, shard_ids=ids)
        base_parts.append(base_chunk)
        comp_parts.append(comp_chunk)
        paired = pair(pd.concat(base_parts, ignore_index=True), pd.concat(comp_parts, ignore_index=True))
        for s in active:
            rows = paired[paired["task"] == s.task]
            c = headline_counts(rows)
            a = alpha_per_look(gate.alpha, len(s.plan), n_checks)
            complete = s.n >= s.available
            kl_pass = None
            if complete and any(k in KL_CHECKS for k in s.limits):
                kl_pass = _kl_pass(rows, s, cfg)
            s.decision, s.checks = decide(s.limits, bounds(c, c["n"], s.available, a), complete, kl_pass)
        if not gate.sequential_all and any(s.decision == "FAIL" for s in states.values()):
            break
    info = {task: {"docs": s.n, "available": s.available, "decision": s.decision, "chunk": s.chunk,
                   "looks": len(s.plan), "checks": s.checks,
                   "bound": {k: c["upper"] for k, c in s.checks.items()}} for task, s in states.items()}
    decisions = [s.decision for s in states.values()]
    verdict = "FAIL" if "FAIL" in decisions else ("PASS" if all(d == "PASS" for d in decisions) else "undecided")
    info["verdict"] = verdict
    info["alpha"] = gate.alpha
    return (pd.concat(base_parts, ignore_index=True), pd.concat(comp_parts, ignore_index=True), info)


def _kl_pass(rows, state: TaskState, cfg) -> bool:
    """The full run's KL checks of a completely evaluated task (its summary row, as the gate computes it)."""
    from flipbench import gate as gate_mod
    from flipbench import metrics
    from flipbench.report import build_summary

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as empty:  # no noise floor or replicas files: the docs' own rows only
        summary = build_summary(metrics.annotate(rows.copy()), cfg, {"method": cfg.compression.method}, Path(empty))
    sub = gate_mod.GateConfig(**{k: v for k, v in state.limits.items() if k in KL_CHECKS})
    return gate_mod.evaluate_gate(summary, sub)["verdict"] != "FAIL"


def gate_verdict(info: dict, full_verdict: dict) -> dict:
    """The gate verdict dict of a sequential run: ``full_verdict`` (evaluate_gate on the docs evaluated) with its
    "verdict" replaced by the sequential decision and each task's verdict by its task decision ("undecided" tasks:
    not judged, as a FAIL elsewhere stopped the run); the bounds go under "sequential"."""
    out = dict(full_verdict)
    out["verdict"] = info["verdict"] if info["verdict"] != "undecided" else "FAIL"
    out["tasks"] = [{**t, "verdict": info.get(t["task"], {}).get("decision", t["verdict"])} for t in full_verdict["tasks"]]
    out["sequential"] = {k: v for k, v in info.items()}
    return out
