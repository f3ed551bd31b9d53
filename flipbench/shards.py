"""Shards: a deterministic 1/N of every task's evaluated docs, so N jobs on N machines evaluate one side together.

``shard=I/N`` (0-based I). Within each lm-eval leaf task (an MMLU subject is a leaf), the evaluated docs are ordered by
(subject, sha256 of lm-eval's doc hash) and dealt round-robin: shard I takes positions I, I+N, I+2N, ... So every
shard holds a near-equal share of every task and subject (sizes differ by at most one per leaf and subject), and the
assignment depends only on the docs, not on the machine, the engine or the order jobs run in.

Exactness: a doc's prompt must not depend on which shard evaluates it. lm-eval draws few-shot examples from one
random stream per task, doc after doc, so rendering a subset would give later docs other examples. While
:func:`only` is active, each task renders the requests of *all* its evaluated docs (as a one-process run does; with
:func:`flipbench.reuse.requests_once` that happens once per process) and keeps those of the shard's docs.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager

from flipbench.config import ConfigError, parse_shard


def doc_order_key(doc: dict, subject_field: str) -> tuple[str, str]:
    from flipbench.compress.calibration import doc_hash

    subject = doc.get(subject_field, "") if isinstance(doc, dict) else ""
    return str(subject), hashlib.sha256(doc_hash(doc).encode()).hexdigest()


def assign(tasks: dict, limits: dict, shard: str | None, subject_field: str = "subject") -> dict[str, list[int]] | None:
    """Leaf -> the sorted doc ids of this shard (leaves with none are left out); None when unsharded.

    ``limits``: leaf -> docs evaluated (the first N; None: all), as :func:`flipbench.evaluate.doc_limits` gives."""
    parsed = parse_shard(shard)
    if parsed is None:
        return None
    index, count = parsed
    out = {}
    for leaf, task in tasks.items():
        docs = list(task.eval_docs)
        n = min(limits.get(leaf) or len(docs), len(docs))
        order = sorted(range(n), key=lambda i: doc_order_key(docs[i], subject_field))
        ids = sorted(order[index::count])
        if ids:
            out[leaf] = ids
    return out


class _Ids(list):
    """A doc-id list with set membership: lm-eval tests ``i in samples`` for every doc of the task."""

    def __init__(self, ids):
        super().__init__(ids)
        self._set = frozenset(ids)

    def __contains__(self, item) -> bool:
        return item in self._set


def lm_eval_samples(ids: dict[str, list[int]]) -> dict[str, list[int]]:
    return {leaf: _Ids(v) for leaf, v in ids.items()}


@contextmanager
def only(tasks: dict, ids: dict[str, list[int]] | None, limit: int | None, samples: dict | None):
    """While active, ``build_all_requests`` called with the shard's ``samples`` renders the requests of every
    evaluated doc (the unsharded ``limit``/``samples``) and keeps the shard's, numbered as lm-eval numbers the docs of
    a ``samples`` list (their position in it). ``ids`` None: nothing changes."""
    if ids is None:
        yield
        return
    patched = []
    for leaf, task in tasks.items():
        if leaf not in ids:
            continue
        build = task.build_all_requests  # possibly reuse.requests_once's

        def sharded(*, _task=task, _build=build, _leaf=leaf, **kwargs):
            kwargs["limit"] = _full_limit(_task, limit)
            kwargs["samples"] = (samples or {}).get(_leaf) if samples is not None else None
            _build(**kwargs)
            position = {doc_id: k for k, doc_id in enumerate(ids[_leaf])}
            kept = [inst for inst in _task._instances if inst.doc_id in position]
            for inst in kept:
                inst.doc_id = position[inst.doc_id]
                inst.metadata = (inst.metadata[0], inst.doc_id, inst.metadata[2])
            if len({inst.doc_id for inst in kept}) != len(position):
                raise ConfigError(f"shard docs of {_leaf} are missing from its requests; check suite.limit")
            _task._instances = kept

        task.build_all_requests = sharded
        patched.append((task, build))
    try:
        yield
    finally:
        for task, build in patched:
            if getattr(build, "__self__", None) is task:  # the class's bound method: drop the instance attribute
                del task.build_all_requests
            else:
                task.build_all_requests = build


def _full_limit(task, limit: int | None):
    from lm_eval.evaluator_utils import get_sample_size

    return get_sample_size(task, limit)
