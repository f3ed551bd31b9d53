"""Builders for small paired samples tables written by hand in the tests (schema.SAMPLE_COLUMNS)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from flipbench.schema import SAMPLE_COLUMNS
from flipbench.tokenkl import TOKEN_COLUMNS


def mc_row(doc_id, target, ll_base, ll_comp, *, task="mc", group=None, choice_len=None, metric="acc",
           choices=None, ll_uncond=None, lm_correct=None, category=None):
    """One multiple-choice row; stored pred/correct are the acc predictions (argmax ll) against ``target`` (an
    index, or "0,2" for several golds). ``lm_correct``: lm-eval's logged {metric: value} per side, as a pair
    (base, comp) of dicts; ``ll_uncond``: the same unconditional log-likelihoods on both sides."""
    k = len(ll_base)
    choice_len = list(choice_len) if choice_len is not None else [1] * k
    pred_b, pred_c = int(np.argmax(ll_base)), int(np.argmax(ll_comp))
    gold = [int(g) for g in str(target).split(",")]
    logged = [json.dumps(side) for side in lm_correct] if lm_correct is not None else [None, None]
    return {
        "category": category, "ll_uncond_base": list(ll_uncond or []), "ll_uncond_comp": list(ll_uncond or []),
        "lm_correct_base": logged[0], "lm_correct_comp": logged[1],
        "task": task, "group": group or task, "doc_id": doc_id, "filter": "none",
        "output_type": "multiple_choice", "metric": metric, "doc_hash": f"d{doc_id}", "prompt_hash": f"p{doc_id}",
        "prompt": f"question {doc_id}", "target": str(target), "choices": choices or [f"c{i}" for i in range(k)],
        "choice_len": choice_len, "ll_base": list(ll_base), "ll_comp": list(ll_comp),
        "pred_base": str(pred_b), "pred_comp": str(pred_c),
        "correct_base": int(pred_b in gold), "correct_comp": int(pred_c in gold),
        "response_base": "", "response_comp": "",
        "p_base": [], "p_comp": [], "kl": np.nan, "js": np.nan, "margin_base": np.nan,
        "same_top": np.nan, "n_tokens": np.nan, **dict.fromkeys(TOKEN_COLUMNS, []),
    }


def gen_row(doc_id, target, pred_base, pred_comp, *, task="gen", group=None, filter="strict-match",
            kl=np.nan, same_top=np.nan, n_tokens=np.nan, tokens=None):
    """One generative row; correct = exact string match of the filtered answer with the target.

    ``tokens``: {TOKEN_COLUMNS name: per-token list}; by default n_tokens tokens that each carry the doc's
    kl and same_top (so token-weighted means equal doc means weighted by n_tokens), log-probs 0.
    """
    if tokens is None:
        n = int(n_tokens) if np.isfinite(n_tokens) and np.isfinite(kl) else 0
        tokens = {"tok_kl": [kl] * n, "tok_same_top": [same_top] * n, "tok_logp_base": [0.0] * n,
                  "tok_logp_comp": [0.0] * n}
    return {
        "task": task, "group": group or task, "doc_id": doc_id, "filter": filter,
        "output_type": "generate_until", "metric": "exact_match", "doc_hash": f"d{doc_id}",
        "prompt_hash": f"p{doc_id}", "prompt": f"Q{doc_id}", "target": target, "choices": [],
        "choice_len": [], "ll_base": [], "ll_comp": [], "pred_base": pred_base, "pred_comp": pred_comp,
        "correct_base": int(pred_base == target), "correct_comp": int(pred_comp == target),
        "response_base": pred_base, "response_comp": pred_comp, "p_base": [], "p_comp": [],
        "kl": kl, "js": np.nan, "margin_base": np.nan, "same_top": same_top, "n_tokens": n_tokens,
        **{name: list(tokens.get(name, [])) for name in TOKEN_COLUMNS},
    }


def table(rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=SAMPLE_COLUMNS)


def log(*p):
    """Log-probabilities whose softmax is exactly the given distribution."""
    return list(np.log(p))
