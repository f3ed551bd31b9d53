"""``suite.sample``: a seeded random share of each task's docs, the prefix of the sequential gate's doc order.

A task's population is every doc the limits select, over all its leaves (an MMLU subject is a leaf): N (leaf, doc id)
pairs in the order :func:`flipbench.sequential.doc_orders` gives them, the sequential gate's own order (``eval.seed``,
the task's name, stratified over subjects when ``gate.stratify``). The sample is the first ceil(share * N) of that
order, so it is a random sample without replacement of the task (stratified: each subject in proportion, see
:func:`flipbench.sequential.doc_order`), and a larger share's sample holds a smaller one's (the search's rungs nest).
"""

from __future__ import annotations

import math

from flipbench.sequential import doc_orders


def available(task_objs: dict, plan, cfg) -> dict[str, int]:
    """Reported task -> N, its docs at full fidelity (every doc the limits select, over all its leaves)."""
    return {task: len(spec["order"]) for task, spec in doc_orders(task_objs, plan, cfg).items()}


def sample_size(share: float, available: int) -> int:
    """Docs in a share's sample of a task with ``available`` docs: ceil(share * N), at least one."""
    return min(available, max(1, math.ceil(share * available - 1e-9))) if available else 0


def sample_ids(task_objs: dict, plan, cfg, share: float) -> tuple[dict[str, list[int]], dict]:
    """(leaf -> sorted doc ids to evaluate, task -> {"docs": n, "available": N, "share": share})."""
    ids: dict[str, list[int]] = {}
    info = {}
    for task, spec in doc_orders(task_objs, plan, cfg).items():
        order = spec["order"]
        n = sample_size(share, len(order))
        for leaf, i in order[:n]:
            ids.setdefault(leaf, []).append(i)
        info[task] = {"docs": n, "available": len(order), "share": share}
    return {leaf: sorted(v) for leaf, v in ids.items()}, info
