"""Token-level KL(base || comp) for generative tasks, as llama.cpp's ``--kl-divergence`` reports it.

Both models are teacher-forced on prompt + the baseline's answer; at every answer token we compare the two
next-token distributions. The models are only read: pass them in eval mode, on a device.

The baseline side can be computed once, before the baseline's weights are quantized in place, and kept
(:func:`answer_logprobs`, :func:`reference_bytes` to budget it); :func:`token_kl` then runs only the
compressed model, so no second copy of the baseline is ever loaded. Per answer token the kept
:class:`Reference` is either the full distribution (KL exact) or its top-k summary, about V / 2k times smaller
(KL known to an interval, flipbench.klbounds: the lower end is reported, the upper end kept beside it).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from flipbench import klbounds

# Per-token values kept in samples.parquet (one list per generative row), so token statistics need no model.
TOKEN_COLUMNS = ("tok_kl", "tok_kl_upper", "tok_same_top", "tok_logp_base", "tok_logp_comp",
                 "tok_top5_overlap", "tok_kl_rev", "tok_js")
TOP_N = 5  # tok_top5_overlap: |top-5 of base ∩ top-5 of comp| / 5


class Reference(NamedTuple):
    """The baseline's next-token distributions at n answer tokens (one row, or several rows end to end)."""

    logp: torch.Tensor  # (n, V) fp32 log-probs; or (n, k) the top-k, descending, when ids is given
    ids: Optional[torch.Tensor]  # (n, k) int32 token ids of logp's columns; None: the full vocabulary
    target: torch.Tensor  # (n,) fp32 log-prob of the answer token itself (exact also outside the top-k)
    log_tail: torch.Tensor  # (n,) fp32 log of the mass outside ids (-inf for the full vocabulary)


def stored_columns(vocab: int, topk: int) -> int | None:
    """Log-probs a reference keeps per token: k, or None for the full vocabulary (``topk`` 0, or a top-k of at
    least half the vocabulary, whose ids and log-probs would take no less room than the exact distribution)."""
    return topk if 0 < 2 * topk < vocab else None


def bytes_per_token(vocab: int, topk: int) -> int:
    """One answer token's reference: fp32 log-probs (and int32 ids for a top-k), fp32 target and tail."""
    k = stored_columns(vocab, topk)
    return (vocab * 4 if k is None else k * 8) + 8


def _summarize(logp: torch.Tensor, targets: torch.Tensor, topk: int) -> Reference:
    """The reference kept of fp32 log-probs (M, V) at M answer tokens whose ids are ``targets`` (M,)."""
    target = logp.gather(-1, targets[:, None].to(logp.device))[:, 0]  # (M,)
    k = stored_columns(logp.shape[-1], topk)
    if k is None:
        return Reference(logp, None, target, torch.full_like(target, float("-inf")))
    top, ids, log_tail = klbounds.summarize(logp, k)
    return Reference(top, ids, target, log_tail)


def _split(ref: Reference, counts: list[int]) -> list[Reference]:
    """Per row, a compact copy on the CPU (a view would keep the whole batch's storage alive, and saved)."""
    parts = [torch.split(t, counts) if t is not None else [None] * len(counts) for t in ref]
    return [Reference(*(t.cpu().clone() if t is not None else None for t in row)) for row in zip(*parts)]


def _join(refs: list[Reference], device) -> Reference:
    """Rows' references end to end, on ``device``."""
    if len({r.ids is None for r in refs}) > 1 or len({r.logp.shape[-1] for r in refs}) > 1:
        raise ValueError("the stored baseline references mix full and top-k rows, or different k")
    return Reference(*(None if parts[0] is None else torch.cat(parts).to(device) for parts in zip(*refs)))


def _encode(tokenizer, prompt: str, answer: str, add_special_tokens: bool) -> tuple[list[int], int]:
    """(ids of prompt + answer, index of the first answer token).

    As lm-eval scores continuations: encode prompt and prompt + answer separately and take the tokens past
    the prompt's length as the answer. An empty answer gives start == len(ids) (nothing to score). When the
    prompt encodes to nothing, the first token has no context and is not scored (start >= 1).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    if not answer:
        return list(prompt_ids), len(prompt_ids)
    ids = tokenizer(prompt + answer, add_special_tokens=add_special_tokens)["input_ids"]
    return list(ids), max(len(prompt_ids), 1)


def _answer_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                     cols: torch.Tensor, device) -> torch.Tensor:
    """fp32 log-softmax of the logits at (rows, cols): (M, V), on the model's (or the given) device."""
    device = device if device is not None else next(model.parameters()).device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits  # (B, T, V)
    return F.log_softmax(logits[rows.to(device), cols.to(device)].float(), dim=-1)


def _answer_batch(model, batch: list[tuple[list[int], int]], pad_id: int, device) -> tuple[torch.Tensor, list[int]]:
    """fp32 log-probs at every answer token of one right-padded batch, (M, V), and the answer tokens per row."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    rows, cols, counts = [], [], []
    for r, (ids, start) in enumerate(batch):
        input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, :len(ids)] = 1
        # the logits at position t predict token t + 1: answer tokens start..len-1 <- positions start-1..len-2
        positions = torch.arange(start - 1, len(ids) - 1)
        rows.append(torch.full_like(positions, r))
        cols.append(positions)
        counts.append(len(positions))
    rows, cols = torch.cat(rows), torch.cat(cols)  # (M,), M = answer tokens in the batch
    return _answer_logprobs(model, input_ids, attention_mask, rows, cols, device), counts


def _targets(batch: list[tuple[list[int], int]]) -> torch.Tensor:
    """The answer tokens of a batch, end to end: (M,)."""
    return torch.tensor([t for ids, start in batch for t in ids[start:]], dtype=torch.long)


def _compare(ref: Reference, logp_c: torch.Tensor, targets: torch.Tensor, counts: list[int]) -> dict:
    """Per-token statistics from the baseline's reference and the compressed side's (M, V) log-probs at M answer
    tokens (the baseline's answer tokens ``targets`` (M,)), split into rows.

    Returns {name: [per-row float64 arrays]} for ``tok_kl`` (KL(b || c) in nats: exact from a full reference,
    the lower bound from a top-k one), ``tok_kl_upper`` (the upper bound; equal to tok_kl when exact),
    ``tok_same_top`` (1.0 where both argmax tokens agree), ``tok_logp_base`` / ``tok_logp_comp`` (log-prob
    of the answer token under each side), ``tok_top5_overlap`` (|top-5 tokens of b ∩ top-5 of c| / 5; exact from
    a top-k reference with k >= 5, NaN below), ``tok_kl_rev`` (KL(c || b) in nats) and ``tok_js`` (Jensen-Shannon
    distance, base 2, in [0, 1], as the choice-level ``js``). From a top-k reference the baseline's tail is known
    only by its mass, so ``tok_kl_rev`` and ``tok_js`` are computed on both distributions coarse-grained to the k
    stored tokens plus one tail bucket: lower bounds (coarse-graining never raises an f-divergence), exact when
    the reference is full.
    """
    logp_b = ref.logp.to(logp_c.device)
    if ref.ids is None:
        if logp_b.shape != logp_c.shape:
            raise ValueError(f"models disagree on the vocabulary size: {logp_b.shape[-1]} vs {logp_c.shape[-1]}")
        p_b = logp_b.exp()
        # xlogy-safe: a token the baseline rules out (p_b = 0) adds 0 even when the other side rules it out too
        # (-inf - -inf would be NaN); one only the compressed side rules out makes KL honestly infinite.
        terms = torch.where(p_b > 0, p_b * (logp_b - logp_c), torch.zeros_like(p_b))  # (M, V)
        kl = terms.double().sum(dim=-1).clamp_min(0.0)  # (M,); >= 0 up to fp32 rounding, which we clamp away
        kl_upper, top_b = kl, logp_b.argmax(dim=-1)
        kl_rev, js = _reverse_and_js(logp_b, logp_c)
        top_n_b = logp_b.topk(min(TOP_N, logp_b.shape[-1]), dim=-1).indices
    else:
        ids = ref.ids.to(logp_c.device)
        if ids.numel() and int(ids.max()) >= logp_c.shape[-1]:
            raise ValueError(f"models disagree on the vocabulary size: the reference holds token id "
                             f"{int(ids.max())}, the compressed model has {logp_c.shape[-1]} tokens")
        kl, kl_upper = klbounds.bounds(logp_b, ids, ref.log_tail.to(logp_c.device), logp_c)
        top_b = ids[:, 0].long()  # top-k is sorted: its first token is the baseline's argmax
        kl_rev, js = _reverse_and_js(*_coarse(logp_b, ids, ref.log_tail.to(logp_c.device), logp_c))
        # the reference's ids are the baseline's top-k in order: its top 5 are known exactly when k >= 5
        top_n_b = ids[:, :TOP_N].long() if ids.shape[-1] >= min(TOP_N, logp_c.shape[-1]) else None
    per_token = {"tok_kl": kl, "tok_kl_upper": kl_upper,
                 "tok_same_top": (top_b == logp_c.argmax(dim=-1)).double(),
                 "tok_logp_base": ref.target.double(),
                 "tok_logp_comp": logp_c.gather(-1, targets.to(logp_c.device)[:, None])[:, 0].double(),
                 "tok_top5_overlap": _overlap(top_n_b, logp_c) if top_n_b is not None
                 else torch.full_like(kl, float("nan")),
                 "tok_kl_rev": kl_rev, "tok_js": js}
    return {name: [part.cpu().numpy() for part in torch.split(values.cpu(), counts)]
            for name, values in per_token.items()}


def _coarse(top_b: torch.Tensor, ids: torch.Tensor, log_tail_b: torch.Tensor,
            logp_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides' log-probs over the k reference tokens plus one bucket for the rest: (M, k + 1) each."""
    ids = ids.long()
    head_c = logp_c.gather(-1, ids)  # (M, k)
    tail_c = torch.logsumexp(logp_c.scatter(-1, ids, float("-inf")), dim=-1)  # (M,)
    return torch.cat([top_b, log_tail_b[:, None]], -1), torch.cat([head_c, tail_c[:, None]], -1)


def _reverse_and_js(logp_b: torch.Tensor, logp_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of (M, V) log-probs: KL(c || b) in nats and the Jensen-Shannon distance (base 2), both fp64.

    KL(c || b) treats zeros as :func:`_compare` treats them for KL(b || c) (xlogy; infinite where only b rules a
    token out). JS: 0.5 KL(b || m) + 0.5 KL(c || m), m = (b + c) / 2, in bits, then its square root."""
    kl_rev, jsd = [], []
    step = max(1, klbounds._CHUNK_ELEMENTS // max(logp_b.shape[-1], 1))  # a few (rows, V) temporaries at once
    for lo in range(0, len(logp_b), step):
        lb, lc = logp_b[lo:lo + step].float(), logp_c[lo:lo + step].float()
        pb, pc = lb.exp(), lc.exp()
        kl_rev.append(torch.where(pc > 0, pc * (lc - lb), torch.zeros_like(pc)).double().sum(-1).clamp_min(0.0))
        lm = torch.logaddexp(lb, lc) - np.log(2.0)
        half = torch.where(pb > 0, pb * (lb - lm), torch.zeros_like(pb)) + torch.where(pc > 0, pc * (lc - lm),
                                                                                       torch.zeros_like(pc))
        jsd.append(0.5 * half.double().sum(-1))
    if not kl_rev:
        return torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.float64)
    jsd = torch.cat(jsd)
    return torch.cat(kl_rev), (jsd.clamp(0.0, np.log(2.0)) / np.log(2.0)).sqrt()


def _overlap(top_n_b: torch.Tensor, logp_c: torch.Tensor) -> torch.Tensor:
    """|top-n of b ∩ top-n of c| / n per row, n = top_n_b's width (TOP_N, or V when the vocabulary is smaller)."""
    n = top_n_b.shape[-1]
    top_n_c = logp_c.topk(n, dim=-1).indices
    return (top_n_b[:, :, None] == top_n_c[:, None, :]).any(-1).double().sum(-1) / n


def _prepare(tokenizer, prompts, answers, batch_size, add_special_tokens):
    """Encoded rows, pad id, and the scored rows in batches (longest first: less padding)."""
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = [_encode(tokenizer, p, a, add_special_tokens) for p, a in zip(prompts, answers)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked; any id works
    order = sorted((i for i, (ids, start) in enumerate(encoded) if len(ids) > start), key=lambda i: -len(encoded[i][0]))
    return encoded, pad_id, [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def _answer_tokens(encoded: list[tuple[list[int], int]]) -> int:
    return sum(len(ids) - start for ids, start in encoded)


def reference_bytes(tokenizer, prompts: list[str], answers: list[str], vocab_size: int, topk: int = 0, *,
                    add_special_tokens: bool = False) -> int:
    """Memory :func:`answer_logprobs` would take: answer tokens × :func:`bytes_per_token`."""
    encoded = [_encode(tokenizer, p, a, add_special_tokens) for p, a in zip(prompts, answers)]
    return _answer_tokens(encoded) * bytes_per_token(vocab_size, topk)


def answer_logprobs(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 8, device=None, *,
                    topk: int = 0, add_special_tokens: bool = False,
                    max_bytes: int | None = None) -> list[Reference] | None:
    """One model's :class:`Reference` at each answer token, per row, on the CPU: the full fp32 log-probs
    (``topk`` 0, or >= V / 2), else the top-``topk`` summary. A row with an empty answer holds 0 tokens. Pass
    the result as ``token_kl``'s ``base`` to reuse it. None, before any forward pass, when it would take more
    than ``max_bytes`` (see :func:`reference_bytes`)."""
    encoded, pad_id, batches = _prepare(tokenizer, prompts, answers, batch_size, add_special_tokens)
    vocab = model.get_output_embeddings().weight.shape[0]
    if max_bytes is not None and _answer_tokens(encoded) * bytes_per_token(vocab, topk) > max_bytes:
        return None
    empty = _summarize(torch.empty(0, vocab), torch.empty(0, dtype=torch.long), topk)
    out = [empty for _ in encoded]
    with torch.inference_mode():
        for chunk in batches:
            rows = [encoded[i] for i in chunk]
            logp, counts = _answer_batch(model, rows, pad_id, device)
            for i, part in zip(chunk, _split(_summarize(logp, _targets(rows), topk), counts)):
                out[i] = part
    return out


def token_kl(
    base,
    model_comp,
    tokenizer,
    prompts: list[str],
    answers: list[str],
    batch_size: int = 8,
    device=None,
    *,
    add_special_tokens: bool = False,
) -> pd.DataFrame:
    """Per-row token-level KL(base || comp) in nats on the baseline's answers.

    ``base`` is the baseline model (KL exact), or its :func:`answer_logprobs` on the same prompts and answers.
    Returns a frame aligned with ``prompts`` with columns ``kl`` (mean over the answer's tokens of the per-token
    KL: full-vocabulary, log-softmax in fp32, summed in fp64; from a top-k reference its lower bound),
    ``same_top`` (share of answer tokens where both models' argmax tokens agree), ``n_tokens`` (answer tokens
    scored), and the per-token lists of TOKEN_COLUMNS (see :func:`_compare`) from which flipbench.klstats
    computes token-weighted statistics. Rows with no answer token get NaN, NaN, 0 and empty lists.
    ``device``: where inputs go (both models must be there); None uses each model's own device.
    ``add_special_tokens`` defaults to False, as lm-eval's HFLM encodes prompts for causal models.
    Rows are batched longest first (less padding); results do not depend on the batching.
    """
    encoded, pad_id, batches = _prepare(tokenizer, prompts, answers, batch_size, add_special_tokens)
    stored = isinstance(base, (list, tuple))
    if stored and len(base) != len(encoded):
        raise ValueError(f"the stored baseline log-probs cover {len(base)} rows, not {len(encoded)}")
    tokens = {name: [np.empty(0) for _ in encoded] for name in TOKEN_COLUMNS}
    with torch.inference_mode():
        for chunk in batches:
            rows = [encoded[i] for i in chunk]
            logp_c, counts = _answer_batch(model_comp, rows, pad_id, device)
            targets = _targets(rows)
            if stored:
                if [len(base[i].target) for i in chunk] != counts:
                    raise ValueError("the stored baseline log-probs were computed on other answers or another tokenizer")
                ref = _join([base[i] for i in chunk], logp_c.device)
            else:
                ref = _summarize(_answer_batch(base, rows, pad_id, device)[0], targets, 0)
            for name, parts in _compare(ref, logp_c, targets, counts).items():
                for i, part in zip(chunk, parts):
                    tokens[name][i] = part
    n_tokens = np.array([len(v) for v in tokens["tok_kl"]], dtype=int)
    with np.errstate(invalid="ignore"):
        mean = lambda parts: np.array([v.mean() if len(v) else np.nan for v in parts])  # noqa: E731
        frame = pd.DataFrame({"kl": mean(tokens["tok_kl"]), "same_top": mean(tokens["tok_same_top"]), "n_tokens": n_tokens})
    for name in TOKEN_COLUMNS:
        frame[name] = [v.tolist() for v in tokens[name]]
    return frame
