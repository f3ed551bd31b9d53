"""Confidence bounds for a finite population's value from a prefix of a random order, at pre-planned looks.

Two kinds of check (docs/sequential.md):
- a **count** over the N docs (flips, lost, gained): exact one-sided hypergeometric bounds for the population count
  K given x positives in n docs drawn without replacement, upper U = max{K : P_K(X <= x) > a} and lower
  L = min{K : P_K(X >= x) > a}; P(U < K) <= a and P(L > K) <= a. At n = N the sample is the population: U = L = K.
- a **bounded mean** (choice KL clipped to [0, B]): the Hoeffding–Serfling bound for sampling without replacement
  (Serfling 1974, with the finite-population factor of Bardenet & Maillard 2015, Bernoulli 21(3)): with
  probability >= 1 - a, mean <= sample mean + B sqrt(rho_n log(1/a) / (2n)), and the same below, where
  rho_n = 1 - (n - 1)/N for n <= N/2 and (1 - n/N)(1 + 1/n) above. rho_N = 0: at n = N the bound is the exact mean.

Every bound holds at one fixed n; the looks n = c, 2c, ..., N are fixed in advance and the error budget is split
over them (and over checks and tasks) by the union bound: a group-sequential design, not a confidence sequence.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import hypergeom


def chunk_size(n_docs: int, chunk: int | None) -> int:
    """Docs per look: ``gate.chunk``, or 10% of the task's docs, at least 50 (never more than the task has)."""
    size = chunk if chunk is not None else max(50, math.ceil(n_docs / 10))
    return max(1, min(size, n_docs)) if n_docs else 1


def looks(n_docs: int, chunk: int) -> list[int]:
    """The pre-planned sample sizes: chunk, 2 chunk, ..., n_docs."""
    return sorted({min(k * chunk, n_docs) for k in range(1, math.ceil(n_docs / chunk) + 1)}) if n_docs else []


def alpha_per_look(alpha: float, n_looks: int, n_checks_total: int) -> float:
    """Bonferroni share of one check of one task at one look."""
    return alpha / (max(n_looks, 1) * max(n_checks_total, 1))


def count_upper(x: int, n: int, N: int, a: float) -> int:
    """Exact upper confidence bound (level 1 - a) for the population count K, x of n drawn without replacement."""
    ks = np.arange(x, N - (n - x) + 1)
    ok = ks[hypergeom.cdf(x, N, ks, n) > a]
    return int(ok.max()) if ok.size else x


def count_lower(x: int, n: int, N: int, a: float) -> int:
    """Exact lower confidence bound (level 1 - a) for the population count K."""
    ks = np.arange(x, N - (n - x) + 1)
    ok = ks[hypergeom.sf(x - 1, N, ks, n) > a]
    return int(ok.min()) if ok.size else x


def proportion_bounds(counts: dict, n: int, N: int, a: float) -> dict:
    """check -> (lower, upper) bound of its population value (a share of N) from the sample counts
    {lost, gained, flips} of n docs. The accuracy drop (lost - gained) / N takes U_lost - L_gained above and
    L_lost - U_gained below, each count bound at a / 2, so both hold together with probability >= 1 - a."""
    out = {}
    for key, name in (("max_flips", "flips"), ("max_lost", "lost")):
        x = int(counts[name])
        out[key] = (count_lower(x, n, N, a) / N, count_upper(x, n, N, a) / N)
    lost, gained = int(counts["lost"]), int(counts["gained"])
    upper = count_upper(lost, n, N, a / 2) - count_lower(gained, n, N, a / 2)
    lower = count_lower(lost, n, N, a / 2) - count_upper(gained, n, N, a / 2)
    out["max_acc_drop"] = (lower / N, upper / N)
    return out


def serfling_rho(n: int, N: int) -> float:
    """The finite-population factor of the Hoeffding–Serfling bound (Bardenet & Maillard 2015); 0 at n = N."""
    return 1 - (n - 1) / N if n <= N / 2 else (1 - n / N) * (1 + 1 / n)


def mean_bounds(values, N: int, clip: float, a: float) -> tuple[float, float]:
    """(lower, upper) bounds, each at level 1 - a, for the population mean of min(v, clip) over N values, from the
    n = len(values) sampled without replacement. A non-finite value counts as ``clip`` for the upper bound and 0 for
    the lower one (it could be anything in [0, clip]). Values are clipped to [0, clip]; KL is never negative."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n == 0:
        return 0.0, float(clip)
    finite = np.isfinite(v)
    high = np.where(finite, np.clip(v, 0.0, clip), clip).mean()
    low = np.where(finite, np.clip(v, 0.0, clip), 0.0).mean()
    width = clip * math.sqrt(max(serfling_rho(n, N), 0.0) * math.log(1 / a) / (2 * n))
    return max(low - width, 0.0), min(high + width, float(clip))
