"""Token-level KL(base || comp) for generative tasks, as llama.cpp's ``--kl-divergence`` reports it.

Both models are teacher-forced on prompt + the baseline's answer; at every answer token we compare the two
full-vocabulary next-token distributions. The models are only read: pass them in eval mode, on a device.

The baseline side can be computed once, before the baseline's weights are quantized in place, and kept
(:func:`answer_logprobs`, :func:`reference_bytes` to budget it); :func:`token_kl` then runs only the
compressed model, so no second copy of the baseline is ever loaded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

# Per-token values kept in samples.parquet (one list per generative row), so token statistics need no model.
TOKEN_COLUMNS = ("tok_kl", "tok_same_top", "tok_logp_base", "tok_logp_comp")


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


def _compare(logp_b: torch.Tensor, logp_c: torch.Tensor, targets: torch.Tensor, counts: list[int]) -> dict:
    """Per-token statistics from the two sides' (M, V) log-probs at M answer tokens, split into rows.

    ``targets`` (M,) are the baseline's answer tokens. Returns {name: [per-row float64 arrays]} for ``tok_kl``
    (full-vocabulary KL(b || c), nats), ``tok_same_top`` (1.0 where both argmax tokens agree) and
    ``tok_logp_base`` / ``tok_logp_comp`` (log-prob of the answer token under each side).
    """
    logp_c = logp_c.to(logp_b.device)
    if logp_b.shape != logp_c.shape:
        raise ValueError(f"models disagree on the vocabulary size: {logp_b.shape[-1]} vs {logp_c.shape[-1]}")
    p_b = logp_b.exp()
    # xlogy-safe: a token the baseline rules out (p_b = 0) adds 0 even when the other side rules it out too
    # (-inf - -inf would be NaN); one only the compressed side rules out makes KL honestly infinite.
    terms = torch.where(p_b > 0, p_b * (logp_b - logp_c), torch.zeros_like(p_b))  # (M, V)
    kl = terms.double().sum(dim=-1).clamp_min(0.0)  # (M,); >= 0 up to fp32 rounding, which we clamp away
    targets = targets.to(logp_b.device)[:, None]
    per_token = {"tok_kl": kl,
                 "tok_same_top": (logp_b.argmax(dim=-1) == logp_c.argmax(dim=-1)).double(),
                 "tok_logp_base": logp_b.gather(-1, targets)[:, 0].double(),
                 "tok_logp_comp": logp_c.gather(-1, targets)[:, 0].double()}
    return {name: [part.cpu().numpy() for part in torch.split(values, counts)] for name, values in per_token.items()}


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


def reference_bytes(tokenizer, prompts: list[str], answers: list[str], vocab_size: int, *,
                    add_special_tokens: bool = False) -> int:
    """Memory :func:`answer_logprobs` would take: answer tokens × vocabulary × 4 bytes."""
    encoded = [_encode(tokenizer, p, a, add_special_tokens) for p, a in zip(prompts, answers)]
    return _answer_tokens(encoded) * vocab_size * 4


def answer_logprobs(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 8, device=None, *,
                    add_special_tokens: bool = False, max_bytes: int | None = None) -> list[torch.Tensor] | None:
    """One model's fp32 log-probs at each answer token, per row: (answer tokens, V) on the CPU ((0, V) when
    the answer is empty). Pass the result as ``token_kl``'s ``base`` to reuse it. None, before any forward
    pass, when they would take more than ``max_bytes`` (see :func:`reference_bytes`)."""
    encoded, pad_id, batches = _prepare(tokenizer, prompts, answers, batch_size, add_special_tokens)
    vocab = model.get_output_embeddings().weight.shape[0]
    if max_bytes is not None and _answer_tokens(encoded) * vocab * 4 > max_bytes:
        return None
    out = [torch.empty(0, vocab) for _ in encoded]
    with torch.inference_mode():
        for chunk in batches:
            logp, counts = _answer_batch(model, [encoded[i] for i in chunk], pad_id, device)
            for i, part in zip(chunk, torch.split(logp.cpu(), counts)):
                out[i] = part.clone()
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

    ``base`` is the baseline model, or its :func:`answer_logprobs` on the same prompts and answers.
    Returns a frame aligned with ``prompts`` with columns ``kl`` (mean over the answer's tokens of the
    full-vocabulary KL, log-softmax in fp32, summed in fp64), ``same_top`` (share of answer tokens where both
    models' argmax tokens agree), ``n_tokens`` (answer tokens scored), and the per-token lists of
    TOKEN_COLUMNS (see :func:`_compare`) from which flipbench.klstats computes token-weighted statistics.
    Rows with no answer token get NaN, NaN, 0 and empty lists.
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
            if stored:
                if [len(base[i]) for i in chunk] != counts:
                    raise ValueError("the stored baseline log-probs were computed on other answers or another tokenizer")
                logp_b = torch.cat([base[i] for i in chunk]).to(logp_c.device)
            else:
                logp_b = _answer_batch(base, rows, pad_id, device)[0]
            targets = torch.tensor([t for ids, start in rows for t in ids[start:]], dtype=torch.long)  # (M,)
            for name, parts in _compare(logp_b, logp_c, targets, counts).items():
                for i, part in zip(chunk, parts):
                    tokens[name][i] = part
    n_tokens = np.array([len(v) for v in tokens["tok_kl"]], dtype=int)
    with np.errstate(invalid="ignore"):
        mean = lambda parts: np.array([v.mean() if len(v) else np.nan for v in parts])  # noqa: E731
        frame = pd.DataFrame({"kl": mean(tokens["tok_kl"]), "same_top": mean(tokens["tok_same_top"]), "n_tokens": n_tokens})
    for name in TOKEN_COLUMNS:
        frame[name] = [v.tolist() for v in tokens[name]]
    return frame
