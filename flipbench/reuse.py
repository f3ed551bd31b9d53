"""Work lm-eval repeats identically for every model it evaluates, done once per process instead.

``simple_evaluate`` rebuilds every task's requests (few-shot sampling, Jinja prompts: 90 s for the 56,168 5-shot
requests of full MMLU on a 2-core CPU) and HFLM tokenizes every (context, continuation) pair again (156 s there)
for each model. Both depend on the tasks, their data, the seed and the tokenizer, never on the weights, so the
first side's are reused by the compressed side, the noise floor, later sweep members in the same process and
search trials (``python -m benchmarks.bench_requests``):

- :func:`requests_once`: while it is active, ``build_all_requests`` with the same task name, config, local data
  bytes, few-shot seed and arguments hands out fresh copies (empty responses) of the last such build's
  instances (one build per task name is kept);
- :func:`memo_lm_class`: lm-eval's HFLM whose ``_encode_pair`` remembers its results per tokenizer definition
  (the serialized fast tokenizer and its settings), at most :data:`MAX_MEMO_TOKENS` tokens per tokenizer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from contextlib import contextmanager

import numpy as np

# Remembered encodings stop growing past this many tokens (int32: 256 MB); lm-eval then tokenizes as usual.
MAX_MEMO_TOKENS = 64_000_000


class _Encodings:
    """One tokenizer's (context, continuation) -> (context ids, continuation ids), contexts stored once."""

    def __init__(self):
        self.contexts: dict[str, np.ndarray] = {}
        self.pairs: dict[tuple[str, str], np.ndarray] = {}
        self.tokens = 0

    def get(self, context: str, continuation: str):
        cont = self.pairs.get((context, continuation))
        if cont is None:
            return None
        return self.contexts[context].tolist(), cont.tolist()

    def put(self, context: str, continuation: str, context_enc: list[int], continuation_enc: list[int]) -> None:
        if self.tokens >= MAX_MEMO_TOKENS:
            return
        if context not in self.contexts:
            self.contexts[context] = np.asarray(context_enc, dtype=np.int32)
            self.tokens += len(context_enc)
        elif self.contexts[context].tolist() != context_enc:  # never expected: same tokenizer, same text
            return
        self.pairs[(context, continuation)] = np.asarray(continuation_enc, dtype=np.int32)
        self.tokens += len(continuation_enc)


_ENCODINGS: dict[str, _Encodings] = {}  # tokenizer fingerprint -> its memo
_FINGERPRINTS: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()
_REQUESTS: dict[str, tuple[tuple, list]] = {}  # task name -> (key, instances of its last build)


def tokenizer_fingerprint(tokenizer) -> str | None:
    """What makes two tokenizer objects encode alike: class, the fast tokenizer's full serialized definition
    (vocabulary, merges, normalizer, pre-tokenizer, post-processor) and its Python-side settings. None for a
    tokenizer without a serialized definition (no memo then)."""
    try:
        known = _FINGERPRINTS.get(tokenizer)
    except TypeError:
        return None
    if known is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        settings = repr(sorted((k, repr(v)) for k, v in getattr(tokenizer, "init_kwargs", {}).items()))
        digest = hashlib.sha256(f"{type(tokenizer).__name__}\0{backend.to_str()}\0{settings}".encode())
        known = _FINGERPRINTS[tokenizer] = digest.hexdigest()
    return known


def encodings(tokenizer) -> _Encodings | None:
    """The memo of every tokenizer that encodes like ``tokenizer`` (created on first use); None when unknown."""
    key = tokenizer_fingerprint(tokenizer)
    if key is None:
        return None
    return _ENCODINGS.setdefault(key, _Encodings())


def memo_lm_class():
    """HFLM with a per-tokenizer memo of ``_encode_pair`` (built lazily: importing lm-eval's HF model is slow)."""
    global _MEMO_HFLM
    if _MEMO_HFLM is None:
        from lm_eval.models.huggingface import HFLM

        class MemoHFLM(HFLM):
            def _encode_pair(self, context: str, continuation: str):
                memo = encodings(self.tokenizer)
                hit = memo.get(context, continuation) if memo is not None else None
                if hit is not None:
                    return hit
                context_enc, continuation_enc = super()._encode_pair(context, continuation)
                if memo is not None:
                    memo.put(context, continuation, context_enc, continuation_enc)
                return context_enc, continuation_enc

        _MEMO_HFLM = MemoHFLM
    return _MEMO_HFLM


_MEMO_HFLM = None


def _config_digest(task) -> str:
    """The task's settings that shape its requests (few-shot count, prompts, generation budget, data files) and
    its local data files' bytes (a file rewritten in place between two runs is new data). An unset few-shot
    count is 0, as build_all_requests reads it (simple_evaluate writes the 0 in before building)."""
    from flipbench.cache import data_files_digest, stable_repr

    config = task.dump_config()
    config["num_fewshot"] = config.get("num_fewshot") or 0
    dumped = json.dumps(config, sort_keys=True, default=stable_repr) + data_files_digest(config)
    return hashlib.sha256(dumped.encode()).hexdigest()


def _arguments(kwargs: dict) -> str:
    """The arguments that shape the instances: lm-eval's on-disk request cache switches change only where they
    come from."""
    from flipbench.cache import stable_repr

    # a chat template arrives as the LM's bound method, whose repr holds a memory address
    return repr(sorted((k, stable_repr(v) if callable(v) and hasattr(v, "__func__") else v)
                       for k, v in kwargs.items() if k not in ("cache_requests", "rewrite_requests_cache")))


def _fresh(instances: list) -> list:
    """Copies that share the rendered prompts but carry no responses (lm-eval appends to ``resps``)."""
    return [dataclasses.replace(inst, resps=[], filtered_resps={}) for inst in instances]


@contextmanager
def requests_once(tasks: dict, seed: int):
    """While active, each task builds its requests once per (name, config and data, few-shot seed, arguments);
    later calls with the same key, from this task object or another one (the next sweep member's), get fresh
    copies of that build's instances. ``seed``: the few-shot seed lm-eval sets on the
    tasks before building (part of the key, as the few-shot draw depends on it)."""
    patched = []
    for task in tasks.values():
        original = task.build_all_requests

        def build(*, _task=task, _original=original, **kwargs):
            name = str(_task.config.task)
            key = (seed, _config_digest(_task), _arguments(kwargs))
            stored = _REQUESTS.get(name)
            if stored is not None and stored[0] == key:
                _task._instances = _fresh(stored[1])
                return
            _original(**kwargs)
            _REQUESTS[name] = (key, _fresh(_task.instances))  # one build per task: a search's next rung asks for other docs

        task.build_all_requests = build
        patched.append(task)
    try:
        yield
    finally:
        for task in patched:
            del task.build_all_requests  # the class's method again
