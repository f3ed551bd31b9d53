"""Confidence bounds for a finite population's value from a prefix of a random order, at pre-planned looks.

Two kinds of check (docs/sequential.md):
- a **count** over the N docs (flips, lost, gained): exact one-sided hypergeometric bounds for the population count
  K given x positives in n docs drawn without replacement, upper U = max{K : P_K(X <= x) > a} and lower
  L = min{K : P_K(X >= x) > a}; P(U < K) <= a and P(L > K) <= a. At n = N the sample is the population: U = L = K.
- a **bounded mean** (choice KL clipped to [0, B]), from two inequalities for sampling without replacement of
  Bardenet & Maillard (2015, Bernoulli 21(3)), each one-sided with probability >= 1 - a:
  Hoeffding–Serfling (range only): mean <= sample mean + B sqrt(rho_n log(1/a) / (2n));
  empirical Bernstein–Serfling (sample variance): mean <= sample mean + s_n sqrt(2 rho_n log(5/a) / n)
  + kappa B log(5/a) / n, with s_n the sample standard deviation (divisor n) and kappa = 7/3 + 3/sqrt(2);
  and the same below. rho_n = 1 - (n - 1)/N for n <= N/2 and (1 - n/N)(1 + 1/n) above. Neither is always the
  tighter (Bernstein wins with a small variance and many docs, Hoeffding with few docs or near n = N, where
  rho_n -> 0 but kappa's term stays), so :func:`mean_bounds` takes the tighter of the two, each at a / 2 (union
  bound). At n = N the sample is the population: the bounds are the exact mean.

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


KAPPA = 7 / 3 + 3 / math.sqrt(2)  # the empirical Bernstein–Serfling constant (Bardenet & Maillard 2015)


def serfling_rho(n: int, N: int) -> float:
    """The finite-population factor of the Serfling bounds (Bardenet & Maillard 2015); 0 at n = N."""
    return 1 - (n - 1) / N if n <= N / 2 else (1 - n / N) * (1 + 1 / n)


def hoeffding_serfling_width(n: int, N: int, B: float, a: float) -> float:
    """Half-width of the one-sided Hoeffding–Serfling bound (level 1 - a) for a mean of values in [0, B]."""
    return B * math.sqrt(max(serfling_rho(n, N), 0.0) * math.log(1 / a) / (2 * n))


def bernstein_serfling_width(s_n, n: int, N: int, B: float, a: float):
    """Half-width of the one-sided empirical Bernstein–Serfling bound (level 1 - a) for a mean of values in [0, B],
    from the sample standard deviation ``s_n`` (divisor n; a number or an array of them)."""
    log_term = math.log(5 / a)  # the theorem holds with probability 1 - 5 delta: delta = a / 5
    return s_n * math.sqrt(2 * max(serfling_rho(n, N), 0.0) * log_term / n) + KAPPA * B * log_term / n


def _moments(values, clip: float) -> tuple[int, tuple[float, float], tuple[float, float]]:
    """(n, (mean, sd) for the upper bound, (mean, sd) for the lower one) of the values clipped to [0, clip]: a
    non-finite value counts as ``clip`` above and 0 below (it could be anything in [0, clip]); KL is never negative.
    sd has divisor n."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n == 0:
        return 0, (0.0, 0.0), (0.0, 0.0)
    finite = np.isfinite(v)
    inside = np.clip(v, 0.0, clip) if finite.all() else np.clip(np.where(finite, v, 0.0), 0.0, clip)
    s1, s2, bad = float(inside.sum()), float(inside @ inside), n - int(finite.sum())

    def stats(total: float, squares: float) -> tuple[float, float]:
        mean = total / n
        return mean, math.sqrt(max(squares / n - mean * mean, 0.0))
    return n, stats(s1 + bad * clip, s2 + bad * clip * clip), stats(s1, s2)


def _bounds(values, N: int, clip: float, a: float, kinds: tuple) -> tuple[float, float]:
    """(lower, upper) at level 1 - a each: the tightest of the ``kinds`` ("hs", "eb") bounds, each at a / len(kinds)."""
    n, (high, high_sd), (low, low_sd) = _moments(values, clip)
    if n == 0:
        return 0.0, float(clip)
    if n >= N:  # the sample is the population (the Bernstein range term would not vanish; Hoeffding's does)
        return low, high
    share = a / len(kinds)
    up = down = math.inf
    for kind in kinds:
        if kind == "hs":
            width = hoeffding_serfling_width(n, N, clip, share)
            up, down = min(up, width), min(down, width)
        else:
            up = min(up, float(bernstein_serfling_width(high_sd, n, N, clip, share)))
            down = min(down, float(bernstein_serfling_width(low_sd, n, N, clip, share)))
    return max(low - down, 0.0), min(high + up, float(clip))


def hoeffding_serfling_bounds(values, N: int, clip: float, a: float) -> tuple[float, float]:
    """(lower, upper), each at level 1 - a, for the population mean of min(v, clip) from n = len(values) of N."""
    return _bounds(values, N, clip, a, ("hs",))


def bernstein_serfling_bounds(values, N: int, clip: float, a: float) -> tuple[float, float]:
    """(lower, upper), each at level 1 - a, from the empirical Bernstein–Serfling inequality; at n = N the exact
    mean (the sample is the population)."""
    return _bounds(values, N, clip, a, ("eb",))


def mean_bounds(values, N: int, clip: float, a: float) -> tuple[float, float]:
    """(lower, upper), each at level 1 - a, for the population mean of min(v, clip) over N values from the
    n = len(values) sampled without replacement: the tighter of the Hoeffding–Serfling and the empirical
    Bernstein–Serfling bound, each at a / 2 (union bound). At n = N the exact clipped mean (a non-finite value:
    clip above, 0 below)."""
    return _bounds(values, N, clip, a, ("hs", "eb"))
