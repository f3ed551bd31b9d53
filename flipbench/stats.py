"""Statistics over paired per-document outcomes: bootstrap intervals, McNemar's test, Cohen's kappa.

Pure functions of arrays: no I/O, no global state, randomness only through an explicit seed.
"""

from __future__ import annotations

import warnings
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

# A statistic maps resampled columns, each (R, N) = (resamples, docs), to one value per resample (R,).
Statistic = Callable[[Mapping[str, np.ndarray]], np.ndarray]

# Upper bound on resampled elements evaluated at once (~16M; ~128 MB per float64 column). Larger
# problems are evaluated over consecutive row blocks of the same index matrix, so results do not change.
_MAX_BLOCK_ELEMENTS = 1 << 24


def paired_bootstrap(
    columns: Mapping[str, np.ndarray],
    statistics: Mapping[str, Statistic],
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for several statistics of the same paired documents.

    ``columns`` are 1-D arrays of equal length N, one value per document. One index matrix
    (n_resamples, N) is drawn with ``np.random.default_rng(seed)`` and applied to every column, so all
    statistics see the same resampled documents (the pairing between base and comp is kept, and the
    intervals of different statistics are comparable). Each statistic receives a dict of (R, N) arrays and
    must reduce over the last axis, returning (R,). Resamples where a statistic is not finite (e.g. all
    resampled KL values are NaN) are left out of its percentiles; if none is finite the interval is
    (nan, nan), as it is when N == 0 or ``n_resamples == 0`` (intervals switched off).
    """
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be >= 0, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    lengths = {a.shape for a in arrays.values()}
    if len(lengths) > 1 or any(len(shape) != 1 for shape in lengths):
        raise ValueError(f"columns must be 1-D arrays of one length, got shapes {sorted(lengths)}")
    n_docs = next(iter(lengths))[0] if lengths else 0
    if n_docs == 0 or n_resamples == 0:
        return {name: (np.nan, np.nan) for name in statistics}

    rng = np.random.default_rng(seed)
    index = rng.integers(0, n_docs, size=(n_resamples, n_docs))  # (R, N)
    rows_per_block = max(1, _MAX_BLOCK_ELEMENTS // n_docs)
    values = {name: [] for name in statistics}
    for start in range(0, n_resamples, rows_per_block):
        block = index[start:start + rows_per_block]
        resampled = {name: a[block] for name, a in arrays.items()}
        for name, statistic in statistics.items():
            values[name].append(np.asarray(statistic(resampled), dtype=float))

    tail = (1 - confidence) / 2
    intervals = {}
    for name, parts in values.items():
        per_resample = np.concatenate(parts)
        finite = per_resample[np.isfinite(per_resample)]
        if finite.size == 0:
            intervals[name] = (np.nan, np.nan)
            continue
        low, high = np.quantile(finite, [tail, 1 - tail])
        intervals[name] = (float(low), float(high))
    return intervals


def nanmean_last(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (without a warning) where a slice is all NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=-1)


def mcnemar_exact(lost_count: int, gained_count: int) -> float:
    """Exact two-sided McNemar test: binomial test of ``lost`` among ``lost + gained`` discordant docs.

    Under the null (compression changes answers but not accuracy) a discordant doc is equally likely to be
    lost or gained. Returns 1.0 when there is no discordant doc.
    """
    lost_count, gained_count = int(lost_count), int(gained_count)
    if lost_count < 0 or gained_count < 0:
        raise ValueError(f"counts must be >= 0, got lost={lost_count}, gained={gained_count}")
    n_discordant = lost_count + gained_count
    if n_discordant == 0:
        return 1.0
    return float(scipy_stats.binomtest(lost_count, n_discordant, 0.5, alternative="two-sided").pvalue)


def cohen_kappa(a, b) -> float:
    """Cohen's kappa between two label sequences of equal length (any hashable labels, e.g. strings).

    kappa = (p_o - p_e) / (1 - p_e) with p_o the observed agreement and p_e the agreement expected from
    the two marginal label distributions. Degenerate case p_e == 1 (both sides always give the same single
    label): kappa is undefined; we return 1.0 when p_o == 1 (always true in that case: the sides are
    identical) and 0.0 otherwise. Empty input gives NaN.
    """
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"label arrays must be 1-D of one length, got {a.shape} and {b.shape}")
    n = a.size
    if n == 0:
        return np.nan
    codes, labels = pd.factorize(np.concatenate([a, b]), use_na_sentinel=False)
    codes_a, codes_b = codes[:n], codes[n:]
    observed = float(np.mean(codes_a == codes_b))
    marginal_a = np.bincount(codes_a, minlength=len(labels)) / n
    marginal_b = np.bincount(codes_b, minlength=len(labels)) / n
    expected = float(marginal_a @ marginal_b)
    if np.isclose(expected, 1.0, rtol=0, atol=1e-12):
        return 1.0 if np.isclose(observed, 1.0, rtol=0, atol=1e-12) else 0.0
    return (observed - expected) / (1 - expected)


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion: beta quantiles, never narrower than the truth.

    0 of N gives [0, 1 - (tail)^(1/N)] (0 of 100 -> [0, 0.0362]), N of N gives [tail^(1/N), 1]; N == 0 gives NaN.
    """
    successes, trials = int(successes), int(trials)
    if trials == 0:
        return np.nan, np.nan
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    ci = scipy_stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error); NaN entries stay NaN and are not in the family.

    Sorted ascending, p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j)) with m the number of finite p-values.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg q-values (false discovery rate, scipy's ``false_discovery_control``); NaN stays NaN."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = scipy_stats.false_discovery_control(p[finite], method="bh")
    return out


def mean_and_se(values) -> tuple[float, float]:
    """Mean and its standard error as llama.cpp's perplexity tool reports them: sqrt((<x²> - <x>²) / (n - 1)).

    NaN for an empty input; the SE is NaN below two values.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return np.nan, np.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, np.nan
    variance = max(float(np.mean(x * x)) - mean * mean, 0.0)  # population variance, rounding clamped at 0
    return mean, float(np.sqrt(variance / (x.size - 1)))


def spearman_interval(x, y, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(rho, low, high, p) of Spearman's rank correlation between paired x, y, finite pairs only; p is two-sided.

    Interval: Fisher z = atanh(rho) with the Bonett-Wright standard error sqrt((1 + rho²/2) / (n - 3)), back
    through tanh; it needs n >= 4 pairs and |rho| < 1 (else NaN bounds); rho and p need n >= 3 and
    non-constant inputs (else all NaN).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = x.size
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan, np.nan, np.nan, np.nan
    rho = float(scipy_stats.spearmanr(x, y).statistic)
    # p from the permutation distribution of rho (exact up to 7 members): the t approximation spearmanr uses
    # says p = 0 for a perfect ranking of 4 members, where the exact value is 2/4! = 0.083
    p = float(scipy_stats.permutation_test((x,), lambda xs: scipy_stats.spearmanr(xs, y).statistic,
                                           permutation_type="pairings", n_resamples=9999, rng=0).pvalue)
    if n < 4 or abs(rho) == 1.0:  # Fisher z is infinite at |rho| = 1: no honest interval
        return rho, np.nan, np.nan, p
    z = float(np.arctanh(rho))
    half = scipy_stats.norm.ppf(0.5 + confidence / 2) * np.sqrt((1 + rho * rho / 2) / (n - 3))
    return rho, float(np.tanh(z - half)), float(np.tanh(z + half)), p


def _tango_z(delta: float, b: int, c: int, n: int) -> float:
    """Tango's score statistic at a hypothesised difference delta = p12 - p21 (b: the 1-0 pairs, c: the 0-1
    pairs, n: all pairs): (b - c - n delta) / sqrt(n (2 q + delta (1 - delta))), q the MLE of p21 under delta,
    the positive root of 2n q² + (-b - c + (2n - b + c) delta) q - c delta (1 - delta) = 0."""
    w = -b - c + (2 * n - b + c) * delta
    q = (-w + np.sqrt(max(w * w + 8 * n * c * delta * (1 - delta), 0.0))) / (4 * n)
    variance = n * (2 * q + delta * (1 - delta))
    numerator = b - c - n * delta
    if variance <= 0:
        return 0.0 if numerator == 0 else np.copysign(np.inf, numerator)
    return numerator / np.sqrt(variance)


def tango_interval(b: int, c: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Tango's (1998) score interval for the difference of two paired proportions, delta = (b - c) / n.

    b and c count the discordant pairs (first right & second wrong, and the reverse) among n pairs. The interval
    holds every delta whose score statistic |Z(delta)| stays within the normal quantile; unlike a percentile
    bootstrap or the Wald interval it keeps its coverage at small n and with no discordant pair (0 of 20 gives
    [-0.161, 0.161], not [0, 0]). Each end is found by bisection (Z falls monotonically in delta). NaN for n == 0.
    """
    b, c, n = int(b), int(c), int(n)
    if n == 0:
        return np.nan, np.nan
    if b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need 0 <= b, c and b + c <= n, got b={b}, c={c}, n={n}")
    z = float(scipy_stats.norm.ppf(0.5 + confidence / 2))
    estimate = (b - c) / n

    def end(limit: float) -> float:
        inside, outside = estimate, limit
        if abs(_tango_z(limit, b, c, n)) <= z:
            return limit
        for _ in range(100):  # 2^-100 of the bracket: exact in double precision
            middle = (inside + outside) / 2
            if abs(_tango_z(middle, b, c, n)) <= z:
                inside = middle
            else:
                outside = middle
        return inside

    return float(end(-1.0)), float(end(1.0))


def clustered_mean_and_se(values, clusters) -> tuple[float, float]:
    """Mean of all values and its cluster-robust standard error, clusters being e.g. the docs answer tokens belong to.

    SE² = G / (G - 1) · Σ_g (Σ_{t∈g} (x_t - x̄))² / N² over G clusters and N values: the sandwich variance of a
    mean (statsmodels' OLS on a constant with ``cov_type="cluster"``), which lets values of one cluster be
    correlated instead of treating them as independent. NaN for no values; the SE is NaN below two clusters.
    """
    x = np.asarray(values, dtype=float)
    g = np.asarray(clusters)
    if x.shape != g.shape or x.ndim != 1:
        raise ValueError(f"values and clusters must be 1-D of one length, got {x.shape} and {g.shape}")
    if x.size == 0:
        return np.nan, np.nan
    mean = float(x.mean())
    codes, _ = pd.factorize(g)
    n_clusters = int(codes.max()) + 1
    if n_clusters < 2:
        return mean, np.nan
    residual_sums = np.bincount(codes, weights=x - mean, minlength=n_clusters)
    variance = n_clusters / (n_clusters - 1) * float(residual_sums @ residual_sums) / x.size**2
    return mean, float(np.sqrt(variance))
