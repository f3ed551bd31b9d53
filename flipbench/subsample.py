"""``suite.sample``: a seeded random share of each task's docs, the prefix of the sequential gate's doc order.

A task's population is every doc the limits select, over all its leaves (an MMLU subject is a leaf): N (leaf, doc id)
pairs, ordered by :func:`flipbench.sequential.doc_order` under ``eval.seed`` and the task's name, as the sequential
gate orders them. The sample is the first ceil(share * N) of that order, so it is a simple random sample without
replacement of the task, and a larger share's sample holds a smaller one's (the budget search's rungs nest).
"""

from __future__ import annotations

import math

from flipbench.sequential import doc_order


def population(task_objs: dict, plan, limits: dict) -> dict[str, list[tuple[str, int]]]:
    """Reported task -> its (leaf, doc id) pairs: the first ``limits[leaf]`` docs of each leaf (None: all)."""
    units: dict[str, list[tuple[str, int]]] = {}
    for leaf, task in task_objs.items():
        docs = len(task.eval_docs)
        n = min(limits.get(leaf) or docs, docs)
        units.setdefault(plan.reported.get(leaf, leaf), []).extend((leaf, i) for i in range(n))
    return units


def sample_size(share: float, available: int) -> int:
    """Docs in a share's sample of a task with ``available`` docs: ceil(share * N), at least one."""
    return min(available, max(1, math.ceil(share * available - 1e-9))) if available else 0


def sample_ids(task_objs: dict, plan, limits: dict, share: float, seed: int) -> tuple[dict[str, list[int]], dict]:
    """(leaf -> sorted doc ids to evaluate, task -> {"docs": n, "available": N, "share": share})."""
    ids: dict[str, list[int]] = {}
    info = {}
    for task, units in sorted(population(task_objs, plan, limits).items()):
        n = sample_size(share, len(units))
        for leaf, i in doc_order(units, seed, task)[:n]:
            ids.setdefault(leaf, []).append(i)
        info[task] = {"docs": n, "available": len(units), "share": share}
    return {leaf: sorted(v) for leaf, v in ids.items()}, info
