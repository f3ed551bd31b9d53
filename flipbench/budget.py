"""Do the tasks' prompts, answer choices and generation budgets fit the model's context? Checked before any weight.

lm-eval finds out late and badly: a generation budget as long as the context is an AssertionError, an answer
choice longer than the context another, and a generative prompt that does not fit beside its budget is cut
from the left without a word (the model then answers a question it only partly sees). Multiple-choice prompts
that are too long only lose their earliest (few-shot) tokens, as lm-eval warns; those are reported, not refused. Here the same requests lm-eval will send are built
from the task objects, tokenised with the baseline's tokenizer the way lm-eval's HFLM does (no special tokens,
trailing spaces of the context moved to the continuation), and measured against the context length HFLM will
use (lm-eval's own ``resolve_max_length`` on the model's config.json and tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass

from flipbench.console import bars_off

DEFAULT_MAX_GEN_TOKS = 256  # HFLM.max_gen_toks: the budget of a generative task that sets none


@dataclass
class Longest:
    """The largest request of one task: prompt tokens, continuation (or generation budget) tokens, and count."""

    prompt: int = 0
    answer: int = 0
    total: int = 0
    over: int = 0  # requests that do not fit


def context_length(config, tokenizer) -> int:
    from lm_eval.models.utils import resolve_max_length

    return resolve_max_length(config, tokenizer, default=2048)


def _lengths(tokenizer, texts: list[str]) -> dict[str, int]:
    unique = sorted(set(texts))
    ids = tokenizer(unique, add_special_tokens=False, verbose=False)["input_ids"] if unique else []
    return {text: len(x) for text, x in zip(unique, ids)}


def measure(task, tokenizer, max_length: int, leaf: str, limit: int | None, samples: dict | None,
            seed: int, chat: dict | None = None) -> tuple[Longest, Longest]:
    """(loglikelihood, generation) extremes over the requests of one lm-eval task that the evaluation will send
    (``limit`` / ``samples`` as :func:`flipbench.evaluate.lm_eval_docs` gives them)."""
    from lm_eval.models.utils import normalize_gen_kwargs

    from flipbench.evaluate import build_requests

    with bars_off():  # the console shows stages, not lm-eval's per-task context building
        build_requests(task, leaf, limit, samples, seed, chat, tokenizer)
    pairs, gens = [], []
    for inst in task.instances:
        if inst.request_type == "loglikelihood":
            context, continuation = inst.arguments[:2]
            spaces = len(context) - len(context.rstrip())
            if spaces:  # as lm-eval's _encode_pair: trailing spaces belong to the continuation
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            pairs.append((context, context + continuation))
        elif inst.request_type == "generate_until":
            budget = normalize_gen_kwargs(dict(inst.arguments[1] or {}), DEFAULT_MAX_GEN_TOKS)["max_gen_toks"]
            gens.append((inst.arguments[0], int(budget)))
    task._instances = None  # simple_evaluate builds them again (or reuses this build: flipbench.reuse)
    ll, gen = Longest(), Longest()
    lengths = _lengths(tokenizer, [c for c, _ in pairs] + [w for _, w in pairs] + [c for c, _ in gens])
    for context, whole in pairs:
        prompt, answer = lengths[context], lengths[whole] - lengths[context]
        ll.prompt, ll.answer, ll.total = max(ll.prompt, prompt), max(ll.answer, answer), max(ll.total, prompt + answer)
        ll.over += prompt + answer > max_length + 1  # lm-eval feeds max_length + 1 tokens minus the last
    for context, budget in gens:
        prompt = lengths[context]
        gen.prompt, gen.answer, gen.total = max(gen.prompt, prompt), max(gen.answer, budget), max(gen.total, prompt + budget)
        gen.over += prompt + budget > max_length
    return ll, gen


def problem(name: str, ll: Longest, gen: Longest, max_length: int, shots: int) -> str | None:
    """One line naming what does not fit and the ways out, or None."""
    fewer = f"fewer shots (++suite.num_fewshot.{name}=0; now {shots})" if shots else "shorter prompts"
    where = f"the model's context of {max_length} tokens"
    if gen.answer >= max_length:
        return (f"task {name}: its generation budget of {gen.answer} tokens leaves no room for a prompt in {where}; "
                f"set suite.max_gen_toks.{name}=<fewer tokens> or use a model with a longer context")
    if ll.answer > max_length:
        return (f"task {name}: an answer choice of {ll.answer} tokens is longer than {where}; use a model with a "
                "longer context or shorten the choices")
    if gen.over:
        return (f"task {name}: {gen.over} prompt(s) of up to {gen.prompt} tokens plus the generation budget of "
                f"{gen.answer} tokens exceed {where} (lm-eval would cut the prompts); use {fewer}, "
                f"suite.max_gen_toks.{name}=<fewer tokens>, LIMIT=<fewer docs> or a model with a longer context")
    return None


def check_context(task_objs: dict, reported: dict[str, str], tokenizer, max_length: int, limit: int | None,
                  samples: dict | None, seed: int, chat: dict | None = None) -> list[str]:
    """Raise ConfigError for the first task whose requests cannot run or would lose their prompt's end; return
    one note per task whose multiple-choice prompts lm-eval will shorten from the left (it drops the earliest
    few-shot text and says so in a warning: the question and its choices stay whole, so the run goes on)."""
    from flipbench.config import ConfigError
    from flipbench.reuse import requests_once

    cut: dict[str, tuple[int, int, int]] = {}  # task -> (requests cut, longest total, shots)
    with requests_once(task_objs, seed):  # the evaluation's first side reuses these builds
        for leaf, task in task_objs.items():
            ll, gen = measure(task, tokenizer, max_length, leaf, limit, samples, seed, chat)
            name, shots = reported.get(leaf, leaf), task.config.num_fewshot or 0
            found = problem(name, ll, gen, max_length, shots)
            if found:
                raise ConfigError(found)
            if ll.over:
                over, total, _ = cut.get(name, (0, 0, 0))
                cut[name] = (over + ll.over, max(total, ll.total), shots)
    return [f"task {name}: {over} prompt(s) with their answer choice reach up to {total} tokens, beyond the model's "
            f"context of {max_length}; lm-eval keeps their last {max_length} tokens"
            + (f" (fewer shots: ++suite.num_fewshot.{name}=0; now {shots})" if shots else "")
            for name, (over, total, shots) in cut.items()]
