"""Token KL(base || comp) through an engine: both sides teacher-forced on prompt + the baseline's answer by
*prompt log-probs* (vLLM's ``prompt_logprobs``, in-process or over its OpenAI server).

An engine returns, at every prompt position, the top-k log-probs and the log-prob of the token actually there.
- Baseline (:func:`answer_reference`): top-k (k = engine.max_logprobs) per answer token, kept as a
  :class:`flipbench.tokenkl.Reference` with the tail mass T_p = 1 - sum(top-k) (from the top-k itself, so a
  tail below ~1e-6 is lost to fp32 rounding: taken as 0).
- Compressed side (:func:`token_kl`): asked for the *full* vocabulary (engine.max_logprobs=-1; a server must
  allow it), the existing top-k bounds of flipbench.klbounds apply unchanged (lower end reported, upper kept
  beside it); that costs V entries per prompt position, so by default the engine returns its top-k' only, q is
  known on S_q = its top-k' and at the answer token t only, and the bounds are (:func:`partial_bounds`):
    lower = sum_{i in A} p_i log(p_i / q_i) + P_R log(P_R / Q_R),   A = (S_p + t) and (S_q + t) (both known),
            P_R = 1 - sum_A p, Q_R = 1 - sum_A q                   (log-sum inequality over the rest, lumped)
    upper = the exact KL where p's whole mass lies in A (P_R = 0), else +inf: a token outside S_q may carry
            q ~ 0 under p > 0, and nothing the engine returns rules that out.
Prefill: the engine returns the same log-probs at the prompt's own positions, so the baseline's reference and the
compressed side's statistics over the prompt's tokens (every one but the first) come from the same requests
(``scopes``, ``prefill``; flipbench.tokenkl's prefill columns).
On the HF engine the models are run directly (flipbench.tokenkl, full vocabulary).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from flipbench import tokenkl

# fp32 log-probs summed: masses known to about this much; Q_R is raised by it so the lower bound stays one
ROUNDING = 1e-6


def _rows(tokenizer, prompts, answers) -> list[tuple[list[int], int]]:
    """(ids of prompt + answer, first answer index) per row, exactly as flipbench.tokenkl encodes them."""
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
    return [tokenkl._encode(tokenizer, p, a, False) for p, a in zip(prompts, answers)]


def _vllm_prompt_logprobs(lm, seqs: list[list[int]], k: int) -> list[list]:
    """Per sequence, per position: {token id: log-prob} (None at position 0), from lm-eval's VLLM's engine."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=k, detokenize=False)
    outputs = lm.model.generate([TokensPrompt(prompt_token_ids=ids) for ids in seqs], params, use_tqdm=False)
    return [[None if pos is None else {int(t): float(v.logprob) for t, v in pos.items()} for pos in out.prompt_logprobs]
            for out in outputs]


def _server_prompt_logprobs(lm, seqs: list[list[int]], k: int) -> list[list]:
    """The same from an OpenAI-compatible server that takes vLLM's ``prompt_logprobs`` (one request per sequence)."""
    from flipbench.engines.server import get_json

    out = []
    for ids in seqs:
        body = {"model": lm.model, "prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": k}
        choice = get_json(lm.base_url, float(lm.timeout), body)["choices"][0]
        if choice.get("prompt_logprobs") is None:
            raise ValueError(f"{lm.base_url} returned no prompt_logprobs: token KL through a server needs vLLM's "
                             "OpenAI server (or one that takes prompt_logprobs)")
        out.append([None if pos is None else {int(t): float(v["logprob"] if isinstance(v, dict) else v)
                                              for t, v in pos.items()} for pos in choice["prompt_logprobs"]])
    return out


def prompt_logprobs(lm, seqs: list[list[int]], k: int) -> list[list]:
    """Per sequence, per position, the engine's top-``k`` (-1: every token) log-probs and the token's own."""
    if type(lm).__name__ == "VLLM":
        return _vllm_prompt_logprobs(lm, seqs, k)
    if hasattr(lm, "base_url"):
        return _server_prompt_logprobs(lm, seqs, k)
    raise TypeError(f"{type(lm).__name__} has no prompt log-probs; on engine=hf use flipbench.tokenkl directly")


def _scoped_positions(rows, k: int, lm, scopes=("answer",)) -> dict[str, list[tuple[list[dict], list[int]]]]:
    """Per scope (flipbench.tokenkl.SCOPES), per row: the engine's log-prob dicts at the scored tokens, and those
    tokens; one request per row for every scope."""
    scored = [i for i, row in enumerate(rows) if tokenkl._scored_tokens([row], scopes)]
    got = prompt_logprobs(lm, [rows[i][0] for i in scored], k) if scored else []
    out = {scope: [([], []) for _ in rows] for scope in scopes}
    for i, positions in zip(scored, got):
        ids, start = rows[i]
        for scope in scopes:
            a, b = tokenkl._span(ids, start, scope)
            out[scope][i] = (positions[a:b], ids[a:b])
    return out


def _top(dicts: list[dict], targets: list[int], k: int | None):
    """(top log-probs (n, k') descending, their ids (n, k'), the target's log-prob (n,)) from per-token dicts; k'
    = k or the fewest entries any position holds (the answer token is dropped from a dict it was only added to)."""
    n = len(dicts)
    ranked = [sorted(d.items(), key=lambda kv: -kv[1]) for d in dicts]
    width = min((len(r) for r in ranked), default=0) if k is None else k
    if k is not None:
        ranked = [r[:k] if len(r) > k else r for r in ranked]
        width = min(width, min((len(r) for r in ranked), default=0))
    top = torch.tensor([[v for _, v in r[:width]] for r in ranked], dtype=torch.float32).reshape(n, width)
    ids = torch.tensor([[t for t, _ in r[:width]] for r in ranked], dtype=torch.int32).reshape(n, width)
    target = torch.tensor([d[t] for d, t in zip(dicts, targets)], dtype=torch.float32)
    return top, ids, target


def _hf_model(lm):
    """The torch model inside lm-eval's HFLM, or None for another engine."""
    model = getattr(lm, "_model", None)
    return model if isinstance(model, torch.nn.Module) else None


def answer_reference(lm, tokenizer, prompts: list[str], answers: list[str], topk: int) -> list[tokenkl.Reference]:
    """:func:`references` at the answer tokens only."""
    return references(lm, tokenizer, prompts, answers, topk)["answer"]


def references(lm, tokenizer, prompts: list[str], answers: list[str], topk: int,
               scopes=("answer",)) -> dict[str, list[tokenkl.Reference]]:
    """The baseline's :class:`flipbench.tokenkl.Reference` per scope and row from the engine's top-``topk`` prompt
    log-probs (``topk`` <= engine.max_logprobs), computed through ``lm`` (vLLM or server; on HFLM, flipbench.tokenkl
    runs the model itself). A row with no token in a scope holds 0 tokens there."""
    if _hf_model(lm) is not None:
        return tokenkl.reference_logprobs(_hf_model(lm), tokenizer, prompts, answers, topk=topk, scopes=scopes)
    if topk < 1:
        raise ValueError(f"topk must be >= 1 through an engine, got {topk}")
    out = {}
    for scope, per_row in _scoped_positions(_rows(tokenizer, prompts, answers), topk, lm, scopes).items():
        out[scope] = []
        for dicts, targets in per_row:
            top, ids, target = _top(dicts, targets, topk)
            # tail mass from the top-k's own: 1 - sum, in fp64; at or below rounding it is 0 (log -> -inf)
            mass = top.double().exp().sum(-1) if len(dicts) else torch.empty(0, dtype=torch.float64)
            log_tail = torch.where(mass < 1 - ROUNDING, torch.log1p(-mass.clamp(max=1.0)), -math.inf).float()
            out[scope].append(tokenkl.Reference(top, ids, target, log_tail))
    return out


def partial_bounds(ref: tokenkl.Reference, q_top: torch.Tensor, q_ids: torch.Tensor, q_target: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) fp64 (M,) on KL(p || q) per token when q is known only on its top-k' ``q_ids`` (M, k') and at
    the answer token ``targets`` (M,) (``q_target``), p on the reference's top-k and at the answer token (module doc)."""
    t = targets.long()[:, None]
    p_ids = torch.cat([ref.ids.long(), t], 1)  # (M, k+1)
    p_log = torch.cat([ref.logp, ref.target[:, None]], 1).double()
    p_valid = torch.cat([torch.ones_like(ref.ids, dtype=torch.bool), ~(ref.ids.long() == t).any(1, keepdim=True)], 1)
    q_all_ids = torch.cat([q_ids.long(), t], 1)  # (M, k'+1)
    q_log = torch.cat([q_top, q_target[:, None]], 1).double()
    match = p_ids[:, :, None] == q_all_ids[:, None, :]  # (M, k+1, k'+1)
    found = match.any(-1) & p_valid
    log_q_at = torch.where(match, q_log[:, None, :], -math.inf).amax(-1)  # (M, k+1)
    p = p_log.exp()
    head = torch.where(found & (p > 0), p * (p_log - log_q_at), 0.0).sum(-1)
    P_R = (1.0 - torch.where(found, p, 0.0).sum(-1)).clamp(min=0.0)
    Q_R = (1.0 - torch.where(found, log_q_at.exp(), 0.0).sum(-1)).clamp(min=0.0) + ROUNDING
    lumped = torch.where(P_R > ROUNDING, P_R * (P_R.log() - Q_R.log()), 0.0)
    lower = (head + lumped).clamp(min=0.0)
    upper = torch.where(P_R > ROUNDING, math.inf, head.clamp(min=0.0))
    return lower, upper


def token_kl(reference: list[tokenkl.Reference], lm, tokenizer, prompts: list[str], answers: list[str],
             topk: int | None = None, prefill: list[tokenkl.Reference] | None = None) -> pd.DataFrame:
    """flipbench.tokenkl.token_kl's per-row frame, the compressed side scored through ``lm`` (vLLM or server) on the
    baseline's ``answers``: its full vocabulary where ``topk`` is None (-1 to the engine; a server must allow it),
    else its top-``topk`` and :func:`partial_bounds`. ``prefill``: the baseline's :func:`references` ``["prefill"]``,
    to score the prompt's tokens too (flipbench.tokenkl.PREFILL_COLUMNS)."""
    if _hf_model(lm) is not None:
        return tokenkl.token_kl(reference, _hf_model(lm), tokenizer, prompts, answers, prefill=prefill)
    rows = _rows(tokenizer, prompts, answers)
    sources = {"answer": reference, "prefill": prefill}
    scopes = tokenkl.SCOPES if prefill is not None else ("answer",)
    for scope in scopes:
        if len(sources[scope]) != len(rows):
            raise ValueError(f"the baseline reference covers {len(sources[scope])} rows, not {len(rows)}")
    tokens = {scope: {name: [np.empty(0) for _ in rows] for name in tokenkl.TOKEN_COLUMNS} for scope in scopes}
    positions = _scoped_positions(rows, -1 if topk is None else topk, lm, scopes)
    for scope in scopes:
        for i, (dicts, targets) in enumerate(positions[scope]):
            if not dicts:
                continue
            ref = sources[scope][i]
            if len(ref.target) != len(targets):
                raise ValueError("the baseline reference was computed on other answers or another tokenizer")
            for name, values in _score(ref, dicts, targets, topk).items():
                tokens[scope][name][i] = values
    answer = tokens["answer"]
    frame = pd.DataFrame({"kl": tokenkl._means(answer["tok_kl"]), "same_top": tokenkl._means(answer["tok_same_top"]),
                          "n_tokens": np.array([len(v) for v in answer["tok_kl"]], dtype=int)})
    for name in tokenkl.TOKEN_COLUMNS:
        frame[name] = [v.tolist() for v in answer[name]]
    if prefill is not None:
        tokenkl.fill_prefill(frame, tokens["prefill"])
    return frame


def _score(ref: tokenkl.Reference, dicts: list[dict], targets: list[int], topk: int | None) -> dict[str, np.ndarray]:
    """Per-token statistics (flipbench.tokenkl.TOKEN_COLUMNS) of one row's scored tokens from the engine's log-prob
    dicts: exact top-k bounds from the full vocabulary (``topk`` None), else :func:`partial_bounds` (KL, its upper
    bound, top-1 and the answer token's log-probs only)."""
    target_ids = torch.tensor(targets, dtype=torch.long)
    if topk is None:
        vocab = max(max(len(d) for d in dicts), int(ref.ids.max()) + 1 if ref.ids is not None and ref.ids.numel() else 0)
        logp_c = torch.full((len(dicts), vocab), -math.inf)
        for r, d in enumerate(dicts):
            logp_c[r, list(d)] = torch.tensor(list(d.values()))
        return {name: parts[0] for name, parts in tokenkl._compare(ref, logp_c, target_ids, [len(dicts)]).items()}
    q_top, q_ids, q_target = _top(dicts, targets, topk)
    lower, upper = partial_bounds(ref, q_top, q_ids, q_target, target_ids)
    return {"tok_kl": lower.numpy(), "tok_kl_upper": upper.numpy(),
            "tok_same_top": (ref.ids[:, 0].long() == q_ids[:, 0].long()).double().numpy(),
            "tok_logp_base": ref.target.double().numpy(), "tok_logp_comp": q_target.double().numpy()}
