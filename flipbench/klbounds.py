"""KL(p ‖ q) from a top-k summary of p: what is kept of the baseline's distribution, and the interval it pins KL to.

At one answer token with vocabulary V, p is the baseline's next-token distribution and q the compressed
model's. The summary keeps the set S of the k tokens with the largest p (their log p and ids) and the tail mass
T_p = Σ_{i∉S} p_i (as log T_p, summed from the tail itself, so a small tail keeps its relative precision).
Every tail token has p_i ≤ cap = min_{i∈S} p_i. With q known in full, the exact KL splits as

    KL = Σ_{i∈S} p_i log(p_i / q_i) + Σ_{i∉S} p_i log(p_i / q_i)        (head, exact; tail, unknown)

and the tail term is bounded on both sides:

- lower: the log-sum inequality gives  Σ_{i∉S} p_i log(p_i / q_i) ≥ T_p log(T_p / T_q),  T_q = Σ_{i∉S} q_i;
  equality when p ∝ q on the tail.
- upper: the tail term is convex in (p_i)_{i∉S}, so over the polytope {0 ≤ p_i ≤ cap, Σ p_i = T_p} its
  maximum is at a vertex: n = ⌊T_p / cap⌋ tokens at cap, one at r = T_p − n·cap, the rest at 0. The value
  n·cap·log cap + r log r − Σ w_i log q_i is largest when the weights (cap ≥ r) sit on the smallest q_i
  (rearrangement inequality): fill cap on the tail tokens with the smallest q first, the last one fractional.
  Reached when the baseline's tail really is that vertex.

With S the whole vocabulary both bounds equal the exact KL. Inputs are fp32 log-probs; sums run in fp64.
"""

from __future__ import annotations

import torch

# Rows per chunk: a few (rows, V) copies of q (scatter, partial sort) live at once; ~32 MB each in fp32.
_CHUNK_ELEMENTS = 1 << 23


def summarize(logp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k summary of M distributions given as fp32 log-probs (M, V), 1 <= k < V.

    Returns (top-k log p (M, k) descending, their token ids (M, k) int32, log T_p (M,)), where T_p is the mass
    outside the top k summed from those tokens' own log-probs (-inf when it underflows to 0).
    """
    if not 1 <= k < logp.shape[-1]:
        raise ValueError(f"k must be in [1, V) = [1, {logp.shape[-1]}), got {k}")
    top, ids = logp.topk(k, dim=-1)  # (M, k), sorted descending
    log_tail = torch.logsumexp(logp.scatter(-1, ids, float("-inf")), dim=-1)  # (M,)
    return top, ids.to(torch.int32), log_tail


def bounds(top_p: torch.Tensor, ids: torch.Tensor, log_tail_p: torch.Tensor,
           logp_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) bounds (M,) fp64 on KL(p ‖ q) per row, from p's top-k summary (:func:`summarize`) and
    q's full log-probs (M, V). lower = head + T_p log(T_p / T_q); upper = head + the vertex maximum (module doc).
    A tail token q rules out (log q = -inf) that may carry p's tail mass makes the upper bound infinite."""
    lower, upper = [], []
    step = max(1, _CHUNK_ELEMENTS // logp_q.shape[-1])
    for lo in range(0, len(logp_q), step):
        part = slice(lo, lo + step)
        low, high = _chunk_bounds(top_p[part], ids[part], log_tail_p[part], logp_q[part])
        lower.append(low)
        upper.append(high)
    if not lower:
        return torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.float64)
    return torch.cat(lower), torch.cat(upper)


def _chunk_bounds(top_p, ids, log_tail_p, logp_q):
    V, k = logp_q.shape[-1], ids.shape[-1]
    ids = ids.long()
    # head: exact over S; a token p rules out adds 0 (xlogy), one only q rules out makes KL infinite
    log_p = top_p.double()  # (M, k)
    p = log_p.exp()
    head = torch.where(p > 0, p * (log_p - logp_q.gather(-1, ids).double()), 0.0).sum(-1)  # (M,)
    # tail masses: T_p stored, T_q summed over q's tail tokens
    log_T_p = log_tail_p.double()
    T_p = log_T_p.exp()
    log_T_q = torch.logsumexp(logp_q.scatter(-1, ids, float("-inf")), dim=-1).double()
    has_tail = T_p > 0
    lumped = torch.where(has_tail, T_p * (log_T_p - log_T_q), 0.0)
    # upper: cap on the n tail tokens with the smallest q, r on the next one
    log_cap = log_p[:, -1]
    cap = log_cap.exp()
    n = torch.where(has_tail, torch.floor(T_p / cap), 0.0).clamp(0, V - k).long()  # tokens filled to cap
    r = torch.where(n < V - k, (T_p - n * cap).clamp(0.0), 0.0)
    r = torch.minimum(r, cap)  # rounding can leave T_p - n·cap a hair above cap
    # q's smallest tail log-probs, ascending: only as many as the fill reaches (the stored tokens set to +inf
    # are never among them); a partial top-k instead of sorting all V
    reach = min(V - k, int(n.max()) + 1) if len(n) else 1
    log_q_tail = logp_q.scatter(-1, ids, float("inf")).topk(reach, dim=-1, largest=False).values.double()  # (M, reach)
    cumsum = torch.cat([torch.zeros_like(log_q_tail[:, :1]), log_q_tail.cumsum(-1)], dim=-1)  # (M, reach+1)
    sum_log_q = cumsum.gather(-1, n[:, None])[:, 0]  # Σ of the n smallest tail log q
    log_q_next = log_q_tail.gather(-1, n.clamp(max=reach - 1)[:, None])[:, 0]  # the token that takes r
    filled = torch.where(n > 0, n * cap * log_cap - cap * sum_log_q, 0.0)
    fraction = torch.where(r > 0, r * (r.log() - log_q_next), 0.0)
    vertex = torch.where(has_tail, filled + fraction, 0.0)
    lower = (head + lumped).clamp_min(0.0)  # KL >= 0; fp rounding of a near-zero head can dip below
    return lower, torch.maximum(head + vertex, lower)
