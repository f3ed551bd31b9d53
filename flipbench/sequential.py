"""Sequential gate: decide the gate's checks on a prefix of each task's docs, with a guarantee about the whole
benchmark (docs/sequential.md; the bounds are in :mod:`flipbench.seqbounds`).

- Order: each reported task's N docs (all its leaves' evaluated docs) in one seeded random order, stratified over
  subjects (:func:`doc_order`), taken in chunks of ``c`` docs; the looks n = c, 2c, ..., N are fixed in advance.
- After each look, every check of a task gets a (lower, upper) bound for its full-benchmark value: flips, lost and
  the accuracy drop from exact hypergeometric bounds, the choice-KL mean of KL clipped to [0, gate.kl_clip] from the
  tighter of a Hoeffding–Serfling and an empirical Bernstein–Serfling bound (each at half the look's share); each
  check at a = alpha / (looks of the task x checks of all tasks) (union bound).
- Decision per task: FAIL when a lower bound exceeds its limit; PASS when every upper bound is within its limit;
  otherwise the next chunk. Token KL has no sequential bound: a task with a token-KL limit is decided by the full
  gate on every doc ("full gate"), as is a task with any KL limit at its last look (the exact unclipped mean).
- The driver (:func:`run_looks`) asks a ``fetch`` function for each chunk's rows; the run evaluates them (or
  loads them from a :class:`ChunkStore`, so a killed run resumes), compare reads them from two artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flipbench.seqbounds import (  # noqa: F401  (re-exported: the bounds' public names)
    alpha_per_look, chunk_size, count_lower, count_upper, looks, mean_bounds, proportion_bounds,
)

PROPORTION_CHECKS = ("max_flips", "max_lost", "max_acc_drop")
KL_CHECKS = ("max_choice_kl_mean", "max_token_kl_mean")
KL_CLIP_FACTOR = 10.0  # gate.kl_clip unset: KL clipped at 10 x the task's limit
bounds = proportion_bounds  # the name the proportion bounds had first


# ---------------------------------------------------------------- order

def _rng(seed: int, *names) -> np.random.Generator:
    digest = hashlib.sha256(":".join(str(x) for x in (seed, *names)).encode()).digest()[:8]
    return np.random.default_rng(int.from_bytes(digest, "little"))


def doc_order(units: list, seed: int, task: str, strata: dict | None = None) -> list:
    """``units`` (e.g. (leaf, doc_id) pairs) in a seeded random order, independent of the input order.

    ``strata`` (unit -> subject): each subject's units are shuffled, and the j-th of a subject's m units gets the
    position key (j + u) / m with one uniform offset u per subject; sorting by key interleaves the subjects in
    proportion: in every prefix of n, a subject's count differs from its share n m / N by less than one doc when
    there are two subjects, and by less than 1 + (S - 2) m / N with S subjects. Without strata: a uniformly random
    permutation."""
    units = sorted(units)
    rng = _rng(seed, task)
    if not strata:
        return [units[i] for i in rng.permutation(len(units))]
    groups: dict = {}
    for unit in units:
        groups.setdefault(str(strata[unit]), []).append(unit)
    keyed = []
    for name in sorted(groups):
        members = groups[name]
        shuffled = [members[i] for i in rng.permutation(len(members))]
        offset = rng.random()
        keyed += [((j + offset) / len(members), rng.random(), unit) for j, unit in enumerate(shuffled)]
    return [unit for _, _, unit in sorted(keyed, key=lambda k: k[:2])]


# ---------------------------------------------------------------- decisions

def decide(limits: dict, bnds: dict, complete: bool) -> tuple[str, dict]:
    """("PASS" | "FAIL" | "undecided" | "full gate", check -> {lower, upper, limit}) for one task.

    ``bnds``: check -> (lower, upper) for the checks that have a sequential bound. A token-KL limit has none, and a
    KL bound is on the clipped mean: such a task passes only by the full gate on every doc ("full gate")."""
    checks = {key: {"lower": bnds[key][0], "upper": bnds[key][1], "limit": float(limit)}
              for key, limit in limits.items() if key in bnds}
    if any(c["lower"] > c["limit"] for c in checks.values()):
        return "FAIL", checks
    unbounded = any(key not in bnds for key in limits)
    if complete and (unbounded or any(key in KL_CHECKS for key in limits)):
        return "full gate", checks
    if not unbounded and all(c["upper"] <= c["limit"] for c in checks.values()):
        return "PASS", checks
    return "undecided", checks


def headline_counts(paired) -> dict:
    """{n, lost, gained, flips} on the headline filter (the first listed of each task) of a paired frame."""
    rows = paired.drop_duplicates(["task", "group", "doc_id"], keep="first")
    b, c = rows["correct_base"].astype(float) >= 0.5, rows["correct_comp"].astype(float) >= 0.5
    lost, gained = int((b & ~c).sum()), int((~b & c).sum())
    return {"n": len(rows), "lost": lost, "gained": gained, "flips": lost + gained}


def choice_kl(paired) -> np.ndarray:
    """Per doc (headline filter) the choice KL of a paired frame's multiple-choice rows."""
    from flipbench import metrics

    rows = paired.drop_duplicates(["task", "group", "doc_id"], keep="first")
    rows = rows[rows["output_type"] == "multiple_choice"]
    return metrics.annotate(rows)["kl"].to_numpy(dtype=float) if len(rows) else np.zeros(0)


@dataclass
class TaskState:
    task: str
    order: list  # (leaf, doc_id) in evaluation order
    chunk: int
    plan: list  # looks
    limits: dict  # the task's gate limits that the sequential gate judges
    clip: dict = field(default_factory=dict)  # KL check -> clip (nats)
    budget: int | None = None  # stop at this many docs (collect's budget, compare's shared docs); None: all
    n: int = 0
    decision: str = "undecided"
    checks: dict = field(default_factory=dict)

    @property
    def available(self) -> int:
        return len(self.order)

    def next_look(self) -> int | None:
        """The next planned look within the budget; None when there is none."""
        cap = self.available if self.budget is None else min(self.budget, self.available)
        later = [n for n in self.plan if self.n < n <= cap]
        return later[0] if later else None

    def bounds(self, paired, a: float) -> dict:
        out = {k: v for k, v in proportion_bounds(headline_counts(paired), self.n, self.available, a).items()
               if k in self.limits}
        for key, clip in self.clip.items():
            out[key] = mean_bounds(choice_kl(paired), self.available, clip, a)
        return out


def doc_orders(task_objs: dict, plan, cfg) -> dict:
    """task -> {"order": [(leaf, doc_id), ...] in the seeded (stratified) order, "kinds": its output types}."""
    from flipbench.side import limits as doc_limits

    counts = doc_limits(task_objs, plan, cfg)
    units: dict[str, list] = {}
    strata: dict = {}
    kinds: dict[str, set] = {}
    for leaf, task in task_objs.items():
        reported = plan.reported.get(leaf, leaf)
        docs = list(task.eval_docs)
        n = min(counts.get(leaf) or len(docs), len(docs))
        for i in range(n):  # a subject is a leaf (MMLU), or the doc's suite.subject_field in a one-leaf task
            subject = docs[i].get(cfg.suite.subject_field) if isinstance(docs[i], dict) else None
            strata[(leaf, i)] = leaf if reported != leaf or subject is None else subject
        units.setdefault(reported, []).extend((leaf, i) for i in range(n))
        kinds.setdefault(reported, set()).add(task.get_config("output_type") if hasattr(task, "get_config") else None)
    return {task: {"order": doc_order(members, cfg.eval.seed, task, strata if cfg.gate.stratify else None),
                   "kinds": sorted(str(k) for k in kinds[task])} for task, members in sorted(units.items())}


def states_from(orders: dict, gate, budget: int | None = None, chunk: int | None = None) -> tuple[dict, int]:
    """(task -> TaskState, checks of all tasks) from :func:`doc_orders`: each task's chunk and looks, the limits the
    sequential gate judges, the KL clips and the doc budget (rounded up to a whole look)."""
    from flipbench import gate as gate_mod

    states = {}
    for task, spec in sorted(orders.items()):
        order, kinds = [tuple(u) for u in spec["order"]], set(spec["kinds"])
        limits = {k: v for k, v in gate_mod.limits_for(task, gate).items() if k in PROPORTION_CHECKS + KL_CHECKS}
        if kinds != {"multiple_choice"}:
            limits.pop("max_choice_kl_mean", None)  # the gate skips a KL key of the other scope
        if "generate_until" not in kinds:
            limits.pop("max_token_kl_mean", None)
        clip = {k: (gate.kl_clip or KL_CLIP_FACTOR * limits[k]) for k in ("max_choice_kl_mean",) if k in limits}
        size = chunk_size(len(order), chunk if chunk is not None else gate.chunk)
        plan_n = looks(len(order), size)
        cap = min([n for n in plan_n if n >= budget] or [len(order)]) if budget else None
        states[task] = TaskState(task, order, size, plan_n, limits, clip, cap)
    n_checks = sum(len([k for k in s.limits if k != "max_token_kl_mean"]) for s in states.values())
    return states, n_checks


def task_states(task_objs: dict, plan, cfg, budget: int | None = None) -> tuple[dict, int]:
    return states_from(doc_orders(task_objs, plan, cfg), cfg.gate, budget)


def row_leaves(frame: pd.DataFrame, leaves: set) -> pd.Series:
    """The lm-eval leaf of each row of a side's frame (a leaf of a group is named <task>_<group>)."""
    named = frame["task"] + "_" + frame["group"].astype(str)
    return named.where(named.isin(leaves), frame["task"])


def rows_of(frame: pd.DataFrame, ids: dict, leaves: set) -> pd.DataFrame:
    """The rows of ``frame`` whose (leaf, doc_id) is among ``ids`` (leaf -> doc ids)."""
    wanted = {(leaf, int(i)) for leaf, v in ids.items() for i in v}
    keys = zip(row_leaves(frame, leaves), frame["doc_id"].astype(int))
    return frame[[k in wanted for k in keys]]


def prefix_chunks(states: dict, shard_ids: dict | None = None) -> list[dict]:
    """The k-th chunk of every task (leaf -> sorted doc ids), for k up to each task's budget; with ``shard_ids``
    only this shard's docs of them."""
    chunks = []
    mine = {leaf: set(v) for leaf, v in shard_ids.items()} if shard_ids is not None else None
    for k in range(max((len(s.plan) for s in states.values()), default=0)):
        ids: dict[str, list[int]] = {}
        for s in states.values():
            cap = s.available if s.budget is None else s.budget
            if k < len(s.plan) and s.plan[k] <= cap:
                for leaf, i in s.order[(s.plan[k - 1] if k else 0):s.plan[k]]:
                    if mine is None or i in mine.get(leaf, ()):
                        ids.setdefault(leaf, []).append(i)
        if ids:
            chunks.append({leaf: sorted(v) for leaf, v in ids.items()})
    return chunks


# ---------------------------------------------------------------- driver

def run_looks(states: dict, fetch, alpha: float, n_checks: int, decide_all: bool = False):
    """Evaluate chunk after chunk until decided: ``fetch(ids)`` (leaf -> sorted doc ids) returns the chunk's
    (baseline rows, compressed rows). Returns (baseline frame, compressed frame, info) of the docs used."""
    from flipbench.pairing import pair

    base_parts, comp_parts = [], []
    while True:
        steps = {s.task: s.next_look() for s in states.values() if s.decision == "undecided"}
        active = [states[t] for t, nxt in steps.items() if nxt is not None]
        if not active:
            break
        ids: dict[str, list[int]] = {}
        for s in active:
            for leaf, i in s.order[s.n:steps[s.task]]:
                ids.setdefault(leaf, []).append(i)
            s.n = steps[s.task]
        base_chunk, comp_chunk = fetch({leaf: sorted(v) for leaf, v in ids.items()})
        base_parts.append(base_chunk)
        comp_parts.append(comp_chunk)
        paired = pair(pd.concat(base_parts, ignore_index=True), pd.concat(comp_parts, ignore_index=True))
        for s in active:
            a = alpha_per_look(alpha, len(s.plan), n_checks)
            s.decision, s.checks = decide(s.limits, s.bounds(paired[paired["task"] == s.task], a), s.n >= s.available)
        if not decide_all and any(s.decision == "FAIL" for s in states.values()):
            break
    info = {task: {"docs": s.n, "available": s.available, "decision": s.decision, "chunk": s.chunk,
                   "looks": len(s.plan), "budget": s.budget, "checks": s.checks, "clip": s.clip,
                   "bound": {k: c["upper"] for k, c in s.checks.items()}} for task, s in states.items()}
    decisions = [s.decision for s in states.values()]
    info["verdict"] = "FAIL" if "FAIL" in decisions else ("PASS" if all(d == "PASS" for d in decisions) else
                                                         "full gate" if all(d in ("PASS", "full gate") for d in decisions)
                                                         else "undecided")
    info["alpha"] = alpha
    concat = (lambda parts: pd.concat(parts, ignore_index=True) if parts else pd.DataFrame())
    return concat(base_parts), concat(comp_parts), info


class ChunkStore:
    """One side's evaluated chunks on disk, keyed by the side's identity and the chunk's doc ids: a run (or
    collect) that was killed finds its finished chunks again and evaluates only the rest."""

    def __init__(self, folder: Path, key: dict):
        from flipbench.cache import cache_key

        self.folder = Path(folder) / cache_key(key)

    def _path(self, ids: dict) -> Path:
        digest = hashlib.sha256(json.dumps({k: list(map(int, v)) for k, v in sorted(ids.items())}).encode())
        return self.folder / f"{digest.hexdigest()[:32]}.parquet"

    def load(self, ids: dict) -> pd.DataFrame | None:
        path = self._path(ids)
        return pd.read_parquet(path) if path.is_file() else None

    def save(self, ids: dict, frame: pd.DataFrame) -> None:
        path = self._path(ids)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)  # atomic: a kill mid-write leaves no half chunk


def stored(evaluate, store: ChunkStore | None):
    """``evaluate(ids)`` through ``store``: a chunk found there is read, one evaluated is written."""
    if store is None:
        return evaluate

    def fetch(ids):
        frame = store.load(ids)
        if frame is None:
            frame = evaluate(ids)
            store.save(ids, frame)
        return frame
    return fetch


def run_sequential(comp_model, comp_tok, task_objs, plan, cfg, *, base=None, base_model=None, base_tok=None,
                   path=None, base_path=None, evaluate=None, store: ChunkStore | None = None,
                   base_store: ChunkStore | None = None):
    """Evaluate the compressed side (and the baseline, unless ``base`` holds the full cached baseline) chunk by chunk
    until the gate is decided. ``store``/``base_store`` keep each evaluated chunk (resume after a kill).
    Returns (base_frame, comp_frame, info) with the docs evaluated; info = {task: {docs, available, decision,
    bound, checks, chunk, looks}, "verdict", "alpha"}."""
    from flipbench.side import evaluate_side

    evaluate = evaluate or evaluate_side
    states, n_checks = task_states(task_objs, plan, cfg, cfg.gate.sequential_docs)
    comp_fetch = stored(lambda ids: evaluate(comp_model, comp_tok, task_objs, plan, cfg, label="compressed", work=None,
                                             path=path, shard_ids=ids), store)
    base_fetch = stored(lambda ids: evaluate(base_model, base_tok, task_objs, plan, cfg, label="baseline", work=None,
                                             path=base_path, shard_ids=ids), base_store)

    def fetch(ids):
        comp_chunk = comp_fetch(ids)
        if base is None:
            return base_fetch(ids), comp_chunk
        keys = comp_chunk[["task", "group", "doc_id"]].drop_duplicates()
        return base.merge(keys, on=["task", "group", "doc_id"], how="inner"), comp_chunk

    return run_looks(states, fetch, cfg.gate.alpha, n_checks, cfg.gate.sequential_all)


def gate_verdict(info: dict, full_verdict: dict) -> dict:
    """The gate verdict dict of a sequential run: ``full_verdict`` (evaluate_gate on the docs evaluated) with each
    task's verdict replaced by its sequential decision, except "full gate" tasks (every doc evaluated, a KL limit),
    which keep the full gate's verdict; "verdict" is PASS only when every task passes. "undecided" tasks (stopped by
    another task's FAIL, or by a doc budget) count as not passed. The bounds go under "sequential"."""
    out = dict(full_verdict)
    tasks = []
    for t in full_verdict["tasks"]:
        decision = info.get(t["task"], {}).get("decision", t["verdict"])
        tasks.append({**t, "verdict": t["verdict"] if decision == "full gate" else decision})
    out["tasks"] = tasks
    verdicts = [t["verdict"] for t in tasks]
    out["verdict"] = "PASS" if verdicts and all(v in ("PASS", "not set") for v in verdicts) and "PASS" in verdicts \
        else "FAIL"
    out["sequential"] = dict(info)
    return out
