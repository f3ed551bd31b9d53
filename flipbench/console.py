"""What a person sees while a run works: one line per stage, one progress bar per evaluated side, and a work
estimate before evaluating. Everything else (lm-eval's per-subject and per-filter progress, datasets' bars,
lm-eval's and transformers' info and warnings) goes to the run's ``run.log`` only; ``-v`` shows it all.

lm-eval draws its own bars with module-level ``tqdm`` calls and exposes no switch for them in
``simple_evaluate``, so :func:`side_progress` swaps those module attributes for the duration of one side and
turns lm-eval's request counts into the side's single bar.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

VERBOSE_ENV = "FLIPBENCH_VERBOSE"  # inherited by sweep members run in other processes
CONSOLE_LOGGERS = ("flipbench",)  # whose INFO records reach the console (not their children)
BAR_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _ConsoleFilter(logging.Filter):
    """Stage lines from flipbench itself; warnings from flipbench's modules; errors from anyone."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if record.name in CONSOLE_LOGGERS:
            return True
        return record.name.startswith("flipbench.") and record.levelno >= logging.WARNING


def setup(level: str = "INFO") -> None:
    """Console logging for the CLI; quiet unless ``-v`` (FLIPBENCH_VERBOSE=1)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    if not verbose():
        handler.addFilter(_ConsoleFilter())
        quiet_libraries()
    logging.basicConfig(level=level, handlers=[handler], force=True)


def quiet_libraries() -> None:
    """datasets' and transformers' own progress bars (one per MMLU subject filter, weight loading) off."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


class _SideCounter:
    """Stands in for lm-eval's request bars: counts finished requests into the side's docs bar."""

    def __init__(self, bar, docs: int, requests: int):
        self.bar, self.docs, self.requests, self.done = bar, docs, max(requests, 1), 0

    def update(self, n: int = 1) -> None:
        self.done += n
        target = min(self.docs, self.done * self.docs // self.requests)
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)

    def close(self) -> None:  # the side's bar outlives each request type's pass
        pass

    def __getattr__(self, name):  # set_description, set_postfix, refresh, ...: nothing to draw
        return lambda *args, **kwargs: None


@contextmanager
def bars_off():
    """lm-eval's own bars hidden (unless ``-v``) while flipbench builds requests outside an evaluated side,
    e.g. the preflight's context-length check."""
    import importlib

    from tqdm import tqdm

    if verbose():
        yield
        return
    modules = [importlib.import_module(name) for name in BAR_MODULES]
    saved = [module.tqdm for module in modules]
    for module in modules:
        module.tqdm = lambda *args, **kwargs: tqdm(*args, **{**kwargs, "disable": True})
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.tqdm = original


@contextmanager
def side_progress(label: str, docs: int, requests: int):
    """One bar for one side: docs done, docs/s and time left, fed by lm-eval's request passes."""
    import importlib

    from tqdm import tqdm

    if verbose() or not docs:
        yield
        return
    bar = tqdm(total=docs, desc=label, unit="doc", dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    counter = _SideCounter(bar, docs, requests)

    def factory(*args, **kwargs):
        if str(kwargs.get("desc", "")).startswith("Running"):  # lm-eval's loglikelihood / generate_until passes
            return counter
        return tqdm(*args, **{**kwargs, "disable": True})

    # lm-eval's bars, and its `git describe` of the working directory, whose "fatal: not a git repository" lands
    # on the console from a subprocess (the manifest records flipbench's own commit).
    patches = [(importlib.import_module(name), "tqdm", factory) for name in BAR_MODULES]
    patches += [(importlib.import_module(name), "get_git_commit_hash", lambda: None)
                for name in ("lm_eval.evaluator", "lm_eval.loggers.utils")]
    saved = [getattr(module, attr) for module, attr, _ in patches]
    for module, attr, replacement in patches:
        setattr(module, attr, replacement)
    try:
        yield
    finally:
        for (module, attr, _), original in zip(patches, saved):
            setattr(module, attr, original)
        counter.update(counter.requests)  # cached or skipped requests still count as done
        bar.close()


@dataclass
class Work:
    docs: int
    requests: int
    tokens: int
    seconds: float

    def line(self) -> str:
        minutes = self.seconds / 60
        return (f"work per side: {self.docs:,} docs, {self.requests:,} requests, ~{self.tokens:,} tokens; "
                f"a timed probe puts it at ~{minutes:.1f} min per side")


def estimate(task_objs: dict, limits: dict, model, tokenizer, seed: int, sample: int = 4) -> Work:
    """``limits``: leaf -> docs evaluated (None: all). Docs and requests exactly; tokens from up to ``sample`` prompts per task; seconds from one timed forward.

    Generative requests count their prompt plus max_gen_toks tokens, so their share is an upper bound.
    """
    import torch

    from flipbench.budget import DEFAULT_MAX_GEN_TOKS  # budget imports this module at its top

    docs = requests = tokens = 0
    for leaf, task in task_objs.items():
        eval_docs = list(task.eval_docs)[: limits.get(leaf) or None]
        shots = task.get_config("num_fewshot") or 0
        generative = task.get_config("output_type") == "generate_until"
        counts = [1 if generative else len(task.doc_to_choice(doc)) for doc in eval_docs]
        lengths = []
        for doc in eval_docs[:sample]:
            context = task.fewshot_context(doc, shots)
            context = context[0] if isinstance(context, list) else context
            lengths.append(len(tokenizer(str(context))["input_ids"]))
        budget = (task.get_config("generation_kwargs") or {}).get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
        extra = budget if generative else 1
        mean = (sum(lengths) / len(lengths) + extra) if lengths else 0
        docs, requests, tokens = docs + len(eval_docs), requests + sum(counts), tokens + int(mean * sum(counts))
        task.set_fewshot_seed(seed=seed)  # the contexts above drew from the sampler; simple_evaluate reseeds too
    probe_len = 256
    ids = torch.randint(0, tokenizer.vocab_size or 100, (1, probe_len), device=model.device)
    start = time.perf_counter()
    with torch.no_grad():
        model(ids)
    per_token = (time.perf_counter() - start) / probe_len
    return Work(docs, requests, tokens, per_token * tokens)
