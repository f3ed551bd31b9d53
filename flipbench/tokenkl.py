"""Token-level KL(base || comp) for generative tasks, as llama.cpp's ``--kl-divergence`` reports it.

Both models are teacher-forced on prompt + the baseline's answer; at every answer token we compare the two
next-token distributions. The models are only read: pass them in eval mode, on a device.

The baseline side can be computed once, before the baseline's weights are quantized in place, and kept
(:func:`answer_logprobs`, :func:`reference_bytes` to budget it); :func:`token_kl` then runs only the
compressed model, so no second copy of the baseline is ever loaded. Per answer token the kept
:class:`Reference` is either the full distribution (KL exact) or its top-k summary, about V / 2k times smaller
(KL known to an interval, flipbench.klbounds: the lower end is reported, the upper end kept beside it).

Prefill: the same forward pass over prompt + answer also gives both models' distributions at the prompt's own
tokens (teacher-forced on the same prompt; every prompt token but the first, which has no context). With
``prefill`` set, :func:`token_kl` scores them too and keeps per row only their count and means
(:data:`PREFILL_COLUMNS`; a few-shot prompt holds hundreds of tokens), so the damage in reading the prompt is
reported apart from the damage in generating the answer.
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
SCOPES = ("answer", "prefill")  # the answer's tokens; the prompt's own tokens after its first
# Per row, over the prompt's tokens: tokens scored, mean KL(b || c) (lower bound from a top-k reference), mean upper
# bound, top-1 agreement and top-5 overlap; NaN when prefill is not scored.
PREFILL_COLUMNS = ("prefill_n_tokens", "prefill_kl", "prefill_kl_upper", "prefill_top1", "prefill_top5")


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


def _span(ids: list[int], start: int, scope: str) -> tuple[int, int]:
    """The scored tokens ids[a:b] of one encoded row in ``scope`` (:data:`SCOPES`)."""
    return (start, len(ids)) if scope == "answer" else (1, start)


def _logits(model, batch: list[tuple[list[int], int]], pad_id: int, device) -> torch.Tensor:
    """The logits of one right-padded batch of encoded rows: (B, T, V), on the model's (or the given) device."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, (ids, _) in enumerate(batch):
        input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, :len(ids)] = 1
    device = device if device is not None else next(model.parameters()).device
    return model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits


def _positions(batch: list[tuple[list[int], int]], scope: str):
    """(batch rows (M,), positions (M,), target ids (M,), scored tokens per row) of every token of ``scope``: the
    logits at position t predict token t + 1, so tokens a..b-1 come from positions a-1..b-2."""
    rows, cols, targets, counts = [], [], [], []
    for r, (ids, start) in enumerate(batch):
        a, b = _span(ids, start, scope)
        n = max(b - a, 0)
        rows += [r] * n
        cols += range(a - 1, a - 1 + n)
        targets += ids[a:a + n]
        counts.append(n)
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return as_long(rows), as_long(cols), as_long(targets), counts


def _logp(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """fp32 log-softmax of the logits at (rows, cols): (M, V)."""
    return F.log_softmax(logits[rows.to(logits.device), cols.to(logits.device)].float(), dim=-1)


def _slices(n: int, vocab: int):
    """Slices of n scored tokens, few enough per slice that a handful of (tokens, V) fp32 temporaries stay small."""
    step = max(1, klbounds._CHUNK_ELEMENTS // max(vocab, 1))
    return [slice(lo, lo + step) for lo in range(0, n, step)]


def _cut(ref: Reference, part: slice) -> Reference:
    return Reference(*(t[part] if t is not None else None for t in ref))


def _cat(parts: list[Reference]) -> Reference:
    return Reference(*(None if ts[0] is None else torch.cat(ts) for ts in zip(*parts)))


def _compare(ref: Reference, logp_c: torch.Tensor, targets: torch.Tensor, counts: list[int]) -> dict:
    """:func:`_compare_flat`'s per-token statistics split into rows of ``counts`` tokens: {name: [float64 arrays]}."""
    return {name: [part.numpy() for part in torch.split(values.cpu(), counts)]
            for name, values in _compare_flat(ref, logp_c, targets).items()}


def _compare_flat(ref: Reference, logp_c: torch.Tensor, targets: torch.Tensor) -> dict:
    """Per-token statistics from the baseline's reference and the compressed side's (M, V) log-probs at M answer
    tokens (the baseline's answer tokens ``targets`` (M,)).

    Returns {name: (M,) float64 tensor} for ``tok_kl`` (KL(b || c) in nats: exact from a full reference,
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
    return {name: values.cpu() for name, values in per_token.items()}


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


def _prepare(tokenizer, prompts, answers, batch_size, add_special_tokens, scopes=("answer",)):
    """Encoded rows, pad id, and the rows with a token to score in ``scopes``, in batches (longest first: less
    padding)."""
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = [_encode(tokenizer, p, a, add_special_tokens) for p, a in zip(prompts, answers)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked; any id works
    scored = (i for i, (ids, start) in enumerate(encoded) if _scored_tokens([(ids, start)], scopes))
    order = sorted(scored, key=lambda i: -len(encoded[i][0]))
    return encoded, pad_id, [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def _scored_tokens(encoded: list[tuple[list[int], int]], scopes=("answer",)) -> int:
    return sum(max(b - a, 0) for ids, start in encoded for a, b in (_span(ids, start, s) for s in scopes))


def reference_bytes(tokenizer, prompts: list[str], answers: list[str], vocab_size: int, topk: int = 0, *,
                    add_special_tokens: bool = False, scopes=("answer",)) -> int:
    """Memory :func:`reference_logprobs` would take: tokens scored in ``scopes`` × :func:`bytes_per_token`."""
    encoded = [_encode(tokenizer, p, a, add_special_tokens) for p, a in zip(prompts, answers)]
    return _scored_tokens(encoded, scopes) * bytes_per_token(vocab_size, topk)


def reference_logprobs(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 8, device=None, *,
                       topk: int = 0, add_special_tokens: bool = False, max_bytes: int | None = None,
                       scopes=("answer",)) -> dict[str, list[Reference]] | None:
    """One model's :class:`Reference` per row at each token of each of ``scopes`` (:data:`SCOPES`), on the CPU,
    from one forward pass over prompt + answer: the full fp32 log-probs (``topk`` 0, or >= V / 2), else the
    top-``topk`` summary. A row with no token in a scope holds 0 tokens there. None, before any forward pass, when
    it would take more than ``max_bytes`` (see :func:`reference_bytes`)."""
    encoded, pad_id, batches = _prepare(tokenizer, prompts, answers, batch_size, add_special_tokens, scopes)
    vocab = model.get_output_embeddings().weight.shape[0]
    if max_bytes is not None and _scored_tokens(encoded, scopes) * bytes_per_token(vocab, topk) > max_bytes:
        return None
    empty = _summarize(torch.empty(0, vocab), torch.empty(0, dtype=torch.long), topk)
    out = {scope: [empty for _ in encoded] for scope in scopes}
    with torch.inference_mode():
        for chunk in batches:
            rows = [encoded[i] for i in chunk]
            logits = _logits(model, rows, pad_id, device)  # (B, T, V)
            for scope in scopes:
                r, c, targets, counts = _positions(rows, scope)
                parts = [_summarize(_logp(logits, r[part], c[part]), targets[part], topk)
                         for part in _slices(len(targets), vocab)]
                for i, ref in zip(chunk, _split(_cat(parts) if parts else empty, counts)):
                    out[scope][i] = ref
            del logits
    return out


def answer_logprobs(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 8, device=None, *,
                    topk: int = 0, add_special_tokens: bool = False,
                    max_bytes: int | None = None) -> list[Reference] | None:
    """:func:`reference_logprobs` at the answer tokens only: the list to pass as ``token_kl``'s ``base``."""
    refs = reference_logprobs(model, tokenizer, prompts, answers, batch_size, device, topk=topk,
                              add_special_tokens=add_special_tokens, max_bytes=max_bytes)
    return None if refs is None else refs["answer"]


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
    prefill=None,
) -> pd.DataFrame:
    """Per-row token-level KL(base || comp) in nats on the baseline's answers (and, with ``prefill``, on the prompt).

    ``base`` is the baseline model (KL exact), or its :func:`answer_logprobs` on the same prompts and answers.
    Returns a frame aligned with ``prompts`` with columns ``kl`` (mean over the answer's tokens of the per-token
    KL: full-vocabulary, log-softmax in fp32, summed in fp64; from a top-k reference its lower bound),
    ``same_top`` (share of answer tokens where both models' argmax tokens agree), ``n_tokens`` (answer tokens
    scored), the per-token lists of TOKEN_COLUMNS (see :func:`_compare_flat`) from which flipbench.klstats
    computes token-weighted statistics, and with ``prefill`` :data:`PREFILL_COLUMNS`. Rows with no answer token get
    NaN, NaN, 0 and empty lists. ``prefill``: None (the prompt is not scored), the baseline model, or its
    :func:`reference_logprobs` ``["prefill"]`` on the same prompts and answers.
    ``device``: where inputs go (both models must be there); None uses each model's own device.
    ``add_special_tokens`` defaults to False, as lm-eval's HFLM encodes prompts for causal models.
    Rows are batched longest first (less padding); results do not depend on the batching.
    """
    scopes = SCOPES if prefill is not None else ("answer",)
    encoded, pad_id, batches = _prepare(tokenizer, prompts, answers, batch_size, add_special_tokens, scopes)
    sources = {"answer": base, "prefill": prefill}
    for scope in scopes:
        if isinstance(sources[scope], (list, tuple)) and len(sources[scope]) != len(encoded):
            raise ValueError(f"the stored baseline log-probs cover {len(sources[scope])} rows, not {len(encoded)}")
    tokens = {scope: {name: [np.empty(0) for _ in encoded] for name in TOKEN_COLUMNS} for scope in scopes}
    with torch.inference_mode():
        for chunk in batches:
            rows = [encoded[i] for i in chunk]
            logits_c = _logits(model_comp, rows, pad_id, device)  # (B, T, V)
            logits_b = {}  # per baseline model: its logits of this batch, computed once for both scopes
            for scope in scopes:
                r, c, targets, counts = _positions(rows, scope)
                source = sources[scope]
                if isinstance(source, (list, tuple)):
                    if [len(source[i].target) for i in chunk] != counts:
                        raise ValueError("the stored baseline log-probs were computed on other answers or another "
                                         "tokenizer")
                    stored = _join([source[i] for i in chunk], logits_c.device)
                elif id(source) not in logits_b:
                    logits_b[id(source)] = _logits(source, rows, pad_id, device)
                flat: dict[str, list] = {}
                for part in _slices(len(targets), logits_c.shape[-1]):
                    logp_c = _logp(logits_c, r[part], c[part])
                    ref = (_cut(stored, part) if isinstance(source, (list, tuple))
                           else _summarize(_logp(logits_b[id(source)], r[part], c[part]), targets[part], 0))
                    for name, values in _compare_flat(ref, logp_c, targets[part]).items():
                        flat.setdefault(name, []).append(values)
                for name, values in flat.items():
                    for i, row in zip(chunk, torch.split(torch.cat(values), counts)):
                        tokens[scope][name][i] = row.numpy()
            del logits_c, logits_b
    answer = tokens["answer"]
    n_tokens = np.array([len(v) for v in answer["tok_kl"]], dtype=int)
    frame = pd.DataFrame({"kl": _means(answer["tok_kl"]), "same_top": _means(answer["tok_same_top"]),
                          "n_tokens": n_tokens})
    for name in TOKEN_COLUMNS:
        frame[name] = [v.tolist() for v in answer[name]]
    if "prefill" in tokens:
        fill_prefill(frame, tokens["prefill"])
    return frame


def fill_prefill(frame: pd.DataFrame, prompt: dict[str, list[np.ndarray]]) -> None:
    """:data:`PREFILL_COLUMNS` of ``frame`` from the per-row, per-token statistics over the prompt's tokens."""
    frame["prefill_n_tokens"] = [float(len(v)) for v in prompt["tok_kl"]]
    for column, name in (("prefill_kl", "tok_kl"), ("prefill_kl_upper", "tok_kl_upper"),
                         ("prefill_top1", "tok_same_top"), ("prefill_top5", "tok_top5_overlap")):
        frame[column] = _means(prompt[name])


def _means(parts: list[np.ndarray]) -> np.ndarray:
    """Per row, the mean of its per-token values (NaN for a row without tokens)."""
    with np.errstate(invalid="ignore"):
        return np.array([v.mean() if len(v) else np.nan for v in parts])
