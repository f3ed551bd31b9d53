"""Token-level KL(base‖comp) on the baseline's generated answers: the baseline's reference, the compressed side's
statistics, and their place in the paired table. Used by the one-process run and by collect/compare.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from flipbench import cache, models
from flipbench.config import FlipbenchConfig

log = logging.getLogger("flipbench")


def _kl_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct generative (task, group, doc_id): GSM8k logs a row per filter with the same generation."""
    return frame[frame["output_type"] == "generate_until"].drop_duplicates(["task", "group", "doc_id"])


def _row_keys(rows: pd.DataFrame, response: str) -> list[tuple]:
    """(task, group, doc_id, digest of prompt + answer) per row: a stored log-prob row only fits the same text."""
    def digest(prompt: str, answer: str) -> str:
        return hashlib.sha256(f"{prompt}\x00{answer}".encode()).hexdigest()[:16]

    return [(str(t), str(g), int(d), digest(str(p), str(a)))
            for t, g, d, p, a in zip(rows["task"], rows["group"], rows["doc_id"], rows["prompt"], rows[response])]


def _prefill_keys(keys: list[tuple]) -> list[tuple]:
    """The row keys of the baseline's reference over the prompt's own tokens (prefill)."""
    return [(*k, "prefill") for k in keys]


def kl_reference(base: pd.DataFrame, model, tokenizer, cfg: FlipbenchConfig, store: cache.BaselineCache, key: str):
    """The baseline's answer-token distributions for token KL, computed while ``model`` still is the baseline.

    Returns {row key: tokenkl.Reference} (see :func:`_row_keys`; top-``eval.token_kl_topk`` or full), from the
    cache when it holds them for the same k; None when token KL is off, no task generates, or they would exceed
    ``eval.token_kl_reference_mb`` (the KL stage then uses the baseline model itself, reloading it if
    quantization changed the loaded copy).
    """
    rows = _kl_rows(base)
    if not cfg.eval.token_kl or rows.empty:
        return None
    keys = _row_keys(rows, "response")
    budget, topk = cfg.eval.token_kl_reference_mb * 2**20, cfg.eval.token_kl_topk
    reference = store.load_reference(key, max_bytes=budget, topk=topk) if cfg.eval.cache else None
    if reference is not None and all(k in reference for k in keys):  # with the prompt's part where it was kept
        return reference
    from flipbench.tokenkl import SCOPES, reference_bytes, reference_logprobs

    prompts, answers = rows["prompt"].tolist(), rows["response"].tolist()
    vocab = model.get_output_embeddings().weight.shape[0]
    scopes = SCOPES if cfg.eval.prefill_kl and reference_bytes(tokenizer, prompts, answers, vocab, topk,
                                                               scopes=SCOPES) <= budget else ("answer",)
    logprobs = reference_logprobs(model, tokenizer, prompts, answers, batch_size=cfg.eval.batch_size,
                                  device=models.input_device(model), topk=topk, max_bytes=budget, scopes=scopes)
    if logprobs is None:
        log.info("token KL: the baseline's reference would exceed eval.token_kl_reference_mb=%d; the baseline "
                 "model is used for the KL pass instead", cfg.eval.token_kl_reference_mb)
        return None
    if cfg.eval.prefill_kl and "prefill" not in logprobs:
        log.info("prefill KL: the baseline's reference over the prompts' tokens would exceed "
                 "eval.token_kl_reference_mb=%d; the prompt is scored only where the baseline model is at hand",
                 cfg.eval.token_kl_reference_mb)
    reference = dict(zip(keys, logprobs["answer"]))
    reference.update(zip(_prefill_keys(keys), logprobs.get("prefill", [])))
    if cfg.eval.cache:
        store.store_reference(key, reference, topk=topk)
    return reference


def token_kl_stage(paired: pd.DataFrame, comp_model, tokenizer, cfg: FlipbenchConfig, reference, base_model) -> None:
    """Token-level KL(base‖comp) on the baseline's generated answers, filled into the generative rows.

    The baseline side comes from ``reference`` (:func:`kl_reference`) where it covers every row, else from
    ``base_model`` (the loaded baseline, where compression left it unchanged), else from a fresh load.
    """
    if not cfg.eval.token_kl or not (paired["output_type"] == "generate_until").any():
        return
    fill_token_kl(paired, token_kl_rows(_kl_rows(paired), "response_base", comp_model, tokenizer, cfg, reference,
                                        base_model))


def token_kl_rows(rows: pd.DataFrame, response: str, comp_model, tokenizer, cfg: FlipbenchConfig, reference,
                  base_model) -> pd.DataFrame:
    """Token KL of ``comp_model`` on the baseline's answers (column ``response`` of ``rows``, one row per generative
    doc): (task, group, doc_id, kl, same_top, n_tokens, per-token lists)."""
    from flipbench.tokenkl import token_kl

    keys = _row_keys(rows, response)
    if reference is not None and all(k in reference for k in keys):
        base = [reference[k] for k in keys]
    else:
        base = base_model if base_model is not None else models.load_model(cfg.model)[0]
    prefill, prompt_keys = None, _prefill_keys(keys)
    if cfg.eval.prefill_kl:  # the prompt's tokens: from the reference, else from a baseline model at hand
        if reference is not None and all(k in reference for k in prompt_keys):
            prefill = [reference[k] for k in prompt_keys]
        else:
            prefill = base if not isinstance(base, list) else base_model
    stats = token_kl(base, comp_model, tokenizer, rows["prompt"].tolist(), rows[response].tolist(),
                     batch_size=cfg.eval.batch_size, device=models.input_device(comp_model), prefill=prefill)
    stats.index = rows.index
    return pd.concat([rows[["task", "group", "doc_id"]], stats], axis=1).reset_index(drop=True)


def fill_token_kl(paired: pd.DataFrame, keyed: pd.DataFrame) -> None:
    """Copy per-doc token-KL statistics (:func:`token_kl_rows`) into the generative rows of ``paired`` (every filter
    row of a doc gets its doc's values); MC rows get empty per-token lists."""
    from flipbench.tokenkl import PREFILL_COLUMNS, TOKEN_COLUMNS

    gen = paired.index[paired["output_type"] == "generate_until"]
    filled = paired.loc[gen, ["task", "group", "doc_id"]].merge(keyed, on=["task", "group", "doc_id"], how="left")
    for column in ("kl", "same_top", "n_tokens"):
        paired.loc[gen, column] = filled[column].to_numpy()
    for column in PREFILL_COLUMNS:  # NaN where the prompt was not scored (or the statistics predate them)
        paired[column] = np.nan
        if column in filled:
            paired.loc[gen, column] = filled[column].to_numpy(dtype=float)
    for column in TOKEN_COLUMNS:  # per-token lists: empty for MC rows
        cells = pd.Series([[] for _ in range(len(paired))], index=paired.index, dtype=object)
        stored = filled[column] if column in filled else [None] * len(filled)  # older artifacts lack newer lists
        cells.loc[gen] = [list(v) if isinstance(v, (list, np.ndarray)) else [] for v in stored]
        paired[column] = cells
