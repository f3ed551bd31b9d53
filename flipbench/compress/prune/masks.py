"""Which weights to remove, given a score per weight (lower = less important): the masks every pruner uses.

A mask is a bool tensor like W (rows, cols), True where the weight is pruned (set to 0).
- per row (Wanda's comparison group, and magnitude's default): in every output row the ⌊cols·s⌋ lowest scores;
- N:M: in every run of M consecutive input columns of a row, the M − N lowest scores (N of M survive, as
  NVIDIA's 2:4 sparse tensor cores store them);
- global: the ⌊total·s⌋ lowest scores over a list of matrices together (magnitude's scope=global).
Ties are broken by position (the earlier column is pruned first), so masks are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Pattern:
    """n:m semi-structured (n kept in every m), or unstructured when m == 0."""

    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float:
        return 1 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else "unstructured"


def parse_pattern(text: str) -> Pattern:
    """'unstructured' or 'N:M' with 0 < N < M; raises ValueError naming the fix."""
    text = str(text).strip()
    if text == "unstructured":
        return Pattern()
    parts = text.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts) and 0 < int(parts[0]) < int(parts[1]):
        return Pattern(int(parts[0]), int(parts[1]))
    raise ValueError(f"pattern={text!r} is invalid; use unstructured or N:M with 0 < N < M, e.g. 2:4 or 4:8")


def lowest(score: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k lowest entries of each row of score (rows, cols), earliest first among ties."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        order = torch.sort(score.float(), dim=1, stable=True).indices  # (rows, cols)
        mask.scatter_(1, order[:, :k], True)
    return mask


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the ⌊cols·sparsity⌋ lowest-scoring weights of every row of score (rows, cols)."""
    return lowest(score, int(score.shape[1] * sparsity))


def nm_mask(score: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Prune the m − n lowest scores in every group of m consecutive columns; cols must be a multiple of m."""
    rows, cols = score.shape
    groups = score.reshape(rows * cols // pattern.m, pattern.m)  # (rows·cols/m, m)
    return lowest(groups, pattern.m - pattern.n).reshape(rows, cols)


def mask_for(score: torch.Tensor, sparsity: float, pattern: Pattern) -> torch.Tensor:
    """The per-row mask at sparsity, or the N:M mask when pattern is structured."""
    return nm_mask(score, pattern) if pattern.structured else row_mask(score, sparsity)


def global_masks(scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Prune the ⌊total·sparsity⌋ lowest scores across every matrix in scores together."""
    flat = torch.cat([s.float().flatten() for s in scores])  # (total,)
    k = int(flat.numel() * sparsity)
    pruned = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        pruned[torch.sort(flat, stable=True).indices[:k]] = True
    masks, start = [], 0
    for s in scores:
        masks.append(pruned[start : start + s.numel()].reshape(s.shape))
        start += s.numel()
    return masks
