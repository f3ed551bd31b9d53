"""KL statistics of one summary row, in the shape llama.cpp's ``perplexity --kl-divergence`` reports them.

Token scope (generative tasks): every answer token of every doc counts once (token-weighted), from the
per-token lists ``tok_kl, tok_kl_upper, tok_same_top, tok_logp_base, tok_logp_comp`` that flipbench.tokenkl
stores per row; from a top-k baseline reference ``tok_kl`` is the lower bound of each token's KL and
``kl_mean_upper`` the mean of the upper bounds, so the true token-weighted mean KL lies in [kl_mean, kl_mean_upper].
Choice scope (multiple choice): the same KL statistics over docs (one choice-level KL per doc); the token-only
ones stay NaN. Definitions (llama.cpp tools/perplexity/perplexity.cpp, ``kl_divergence``):
mean, percentiles by linear interpolation at fraction·(n - 1) (numpy's default); same-top rate; Δp = p_c(t) -
p_b(t) of the baseline's answer token t, its mean and RMS sqrt(<Δp²>); ln(PPL_c / PPL_b) = <ln p_b(t) - ln p_c(t)>
(the paired difference per token). Standard errors differ from llama.cpp's on purpose: the tokens of one answer
are correlated (one wrong turn shifts every token after it), so the SEs of token statistics (kl_se, same_top_se,
ln_ppl_ratio_se) are cluster-robust with the doc as cluster (:func:`flipbench.stats.clustered_mean_and_se`); the
choice scope, one value per doc, keeps sqrt((<x²> - <x>²) / (n - 1)). Only finite values count.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flipbench.scoring import floats
from flipbench.stats import clustered_mean_and_se, mean_and_se

# fraction -> column; median is the 0.5 percentile
PERCENTILES = {0.999: "kl_p999", 0.99: "kl_p99", 0.95: "kl_p95", 0.9: "kl_p90", 0.5: "kl_median",
               0.1: "kl_p10", 0.05: "kl_p05", 0.01: "kl_p01", 0.001: "kl_p001"}
KL_COLUMNS = ["kl_mean", "kl_se", "kl_max", *PERCENTILES.values(), "kl_min"]
TOKEN_ONLY = ["kl_mean_upper", "same_top", "same_top_se", "dp_mean", "dp_rms", "ln_ppl_ratio", "ln_ppl_ratio_se"]
COLUMNS = KL_COLUMNS + TOKEN_ONLY
# Token agreement on the baseline's answer (generative only), token-weighted with doc-clustered SEs: top-1
# agreement (the same tokens as same_top), top-5 overlap, reverse KL(comp||base) in nats and the Jensen-Shannon
# distance (base 2). From a top-k reference: top-1 exact, top-5 exact for k >= 5 (NaN below), reverse KL and JS
# lower bounds (flipbench.tokenkl._compare).
AGREEMENT = {"top1_agree": "tok_same_top", "top5_overlap": "tok_top5_overlap", "kl_reverse_mean": "tok_kl_rev",
             "js_mean": "tok_js"}
AGREEMENT_COLUMNS = [c for name in AGREEMENT for c in (name, f"{name}_se")]
# Prefill (generative only): the same teacher-forced comparison over the prompt's own tokens, from the per-doc token
# counts and means flipbench.tokenkl keeps (prefill_n_tokens, prefill_kl, ...): token-weighted means, doc-clustered
# SEs; a doc whose mean is not finite is left out of that statistic.
PREFILL = {"prefill_kl_mean": "prefill_kl", "prefill_kl_mean_upper": "prefill_kl_upper",
           "prefill_top1_agree": "prefill_top1", "prefill_top5_overlap": "prefill_top5"}
PREFILL_SUMMARY = ["prefill_tokens", "prefill_kl_mean", "prefill_kl_se", "prefill_kl_mean_upper", "prefill_top1_agree",
                   "prefill_top1_agree_se", "prefill_top5_overlap"]
_PREFILL_SE = {"prefill_kl_mean": "prefill_kl_se", "prefill_top1_agree": "prefill_top1_agree_se"}


def kl_distribution(kl, clusters=None) -> dict[str, float]:
    """mean, SE, max, the PERCENTILES and min of the finite values of ``kl`` (all NaN when there are none); with
    ``clusters`` (the doc of each value) the SE is cluster-robust."""
    kl = np.asarray(kl, dtype=float)
    finite = np.isfinite(kl)
    kl = kl[finite]
    if kl.size == 0:
        return dict.fromkeys(KL_COLUMNS, np.nan)
    mean, se = mean_and_se(kl) if clusters is None else clustered_mean_and_se(kl, np.asarray(clusters)[finite])
    out = {"kl_mean": mean, "kl_se": se, "kl_max": float(kl.max()), "kl_min": float(kl.min())}
    out.update(zip(PERCENTILES.values(), np.percentile(kl, [100 * f for f in PERCENTILES]).tolist()))
    return out


def _is_list(cell) -> bool:
    return isinstance(cell, (list, tuple, np.ndarray)) and len(cell) > 0


def _concat(cells: pd.Series) -> np.ndarray:
    """The per-row lists of one column, end to end (parquet gives None for a NaN inside a list)."""
    parts = [floats(cell) for cell in cells if _is_list(cell)]
    return np.concatenate(parts) if parts else np.empty(0)


def _docs(cells: pd.Series) -> np.ndarray:
    """The row (doc) each value of :func:`_concat` comes from: the clusters of the token statistics' SEs."""
    parts = [np.full(len(cell), i) for i, cell in enumerate(cells) if _is_list(cell)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=int)


def token_stats(rows: pd.DataFrame) -> dict[str, float]:
    """Token-weighted statistics over the answer tokens of ``rows`` (rows without the lists give NaN)."""
    if "tok_kl" not in rows:
        return dict.fromkeys(COLUMNS, np.nan)
    kl = _concat(rows["tok_kl"])
    out = kl_distribution(kl, _docs(rows["tok_kl"]))
    out["kl_mean_upper"] = _upper_mean(rows, np.isfinite(kl))
    same, same_docs = _concat(rows["tok_same_top"]), _docs(rows["tok_same_top"])
    kept = np.isfinite(same)
    p_top, p_se = clustered_mean_and_se(same[kept], same_docs[kept])
    logp_b, logp_c = _concat(rows["tok_logp_base"]), _concat(rows["tok_logp_comp"])
    with np.errstate(invalid="ignore", over="ignore"):
        dp = np.exp(logp_c) - np.exp(logp_b)  # a ruled-out token has p = exp(-inf) = 0: finite Δp
        d_nll = logp_b - logp_c  # per-token ln PPL_c - ln PPL_b contribution
    dp = dp[np.isfinite(dp)]
    kept = np.isfinite(d_nll)
    docs = _docs(rows["tok_logp_base"])
    ratio, ratio_se = clustered_mean_and_se(d_nll[kept], docs[kept]) if docs.shape == d_nll.shape else (np.nan, np.nan)
    out.update({"same_top": p_top, "same_top_se": p_se,
                "dp_mean": float(dp.mean()) if dp.size else np.nan,
                "dp_rms": float(np.sqrt(np.mean(dp * dp))) if dp.size else np.nan,
                "ln_ppl_ratio": ratio, "ln_ppl_ratio_se": ratio_se})
    return out


def _upper_mean(rows: pd.DataFrame, finite: np.ndarray) -> float:
    """Mean of the per-token KL upper bounds over the tokens kl_mean counts (those with a finite tok_kl): an
    upper bound on kl_mean's exact value. NaN without the column (samples written before it existed)."""
    if "tok_kl_upper" not in rows or not finite.any():
        return np.nan
    upper = _concat(rows["tok_kl_upper"])
    return float(upper[finite].mean()) if upper.shape == finite.shape else np.nan


def choice_stats(kl) -> dict[str, float]:
    """Choice scope: the KL distribution over docs; token-only columns NaN."""
    return {**kl_distribution(kl), **dict.fromkeys(TOKEN_ONLY, np.nan)}


def token_sums(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per row (sum of finite token KL, finite token count): the pieces a doc-level bootstrap of the
    token-weighted mean resamples (a doc's tokens move together, so the interval respects their correlation)."""
    if "tok_kl" not in rows:
        return np.full(len(rows), np.nan), np.zeros(len(rows))
    sums, counts = np.full(len(rows), np.nan), np.zeros(len(rows))
    for i, cell in enumerate(rows["tok_kl"]):
        values = floats(cell if cell is not None else [])
        values = values[np.isfinite(values)]
        if values.size:
            sums[i], counts[i] = values.sum(), values.size
    return sums, counts


def agreement_stats(rows: pd.DataFrame) -> dict[str, float]:
    """Token-weighted mean and doc-clustered SE of each :data:`AGREEMENT` list over the answer tokens of ``rows``
    (finite values only; NaN where the column is absent, e.g. samples written before it existed)."""
    out = dict.fromkeys(AGREEMENT_COLUMNS, np.nan)
    for name, column in AGREEMENT.items():
        if column not in rows:
            continue
        values, docs = _concat(rows[column]), _docs(rows[column])
        kept = np.isfinite(values)
        if kept.any() and docs.shape == values.shape:
            out[name], out[f"{name}_se"] = clustered_mean_and_se(values[kept], docs[kept])
    return out


def prefill_stats(rows: pd.DataFrame) -> dict[str, float]:
    """:data:`PREFILL_SUMMARY` over ``rows`` (one per doc): prompt tokens scored, and per :data:`PREFILL` statistic its
    token-weighted mean sum(n_d m_d) / sum(n_d) with the doc-clustered SE of a mean over the docs' tokens (the SE of
    the tokens' values needs only each doc's sum of them, n_d m_d). NaN where the prompt was not scored."""
    out = dict.fromkeys(PREFILL_SUMMARY, np.nan)
    if "prefill_n_tokens" not in rows:
        return out
    n = np.asarray(pd.to_numeric(rows["prefill_n_tokens"], errors="coerce"), dtype=float)
    scored = np.isfinite(n) & (n > 0)
    if not scored.any():
        return out
    out["prefill_tokens"] = float(n[scored].sum())
    for name, column in PREFILL.items():
        means = np.asarray(pd.to_numeric(rows[column], errors="coerce"), dtype=float) if column in rows \
            else np.full(len(rows), np.nan)
        kept = scored & np.isfinite(means)
        if not kept.any():
            continue
        counts = n[kept].astype(int)  # each doc's mean stands for its n_d tokens: the same mean and clustered SE
        mean, se = clustered_mean_and_se(np.repeat(means[kept], counts), np.repeat(np.arange(kept.sum()), counts))
        out[name] = mean
        if name in _PREFILL_SE:
            out[_PREFILL_SE[name]] = se
    return out
