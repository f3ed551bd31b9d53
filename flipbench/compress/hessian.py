"""Input statistics of a layer's linears, shared by GPTQ, TACQ, SparseGPT and Wanda.

- :class:`Hessian`: H = 2/N Σ x xᵀ (cols, cols) of the layer-wise objective ||XWᵀ − XŴᵀ||², accumulated
  batch by batch, and :func:`inverse_cholesky`, the damped upper Cholesky factor of H⁻¹ that both GPTQ and
  SparseGPT sweep columns with.
- :class:`ColumnNorms`: only the squared input norms ||X_j||² (cols,), what Wanda scores weights with.
- :func:`solve_layer`: collect H (or the column norms) for each weight of one decoder layer (true-sequential)
  and replace the weight by what a solver makes of it: the layer loop of GPTQ, SparseGPT and Wanda.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from flipbench.compress.families import block_linears, in_features, set_weight_matrix, weight_matrix
from flipbench.compress.layerwise import LayerInputs, collect_inputs, run_layer, sequential_groups

MAX_DAMP_RETRIES = 6  # damp × 10 per retry: 0.01·mean(diag H) reaches 10⁴·mean(diag H)


class Hessian:
    """H (cols, cols) = 2/N Σ x xᵀ over every input row x seen by add_batch, summed in ``dtype`` (float64 makes the
    sum's last bits, and with them GPTQ's rounding decisions, independent of the thread count)."""

    def __init__(self, columns: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.H = torch.zeros(columns, columns, dtype=dtype, device=device)  # (cols, cols)
        self.nsamples = 0

    def add_batch(self, X: torch.Tensor) -> None:
        """X (..., cols): one batch of inputs; H stays the running 2/N Σ x xᵀ."""
        X = X.reshape(-1, X.shape[-1]).to(self.H.device, self.H.dtype)  # (n, cols)
        n = X.shape[0]
        if n == 0:  # an expert no token of this batch was routed to
            return
        self.H *= self.nsamples / (self.nsamples + n)
        self.nsamples += n
        X = math.sqrt(2 / self.nsamples) * X
        self.H += X.t() @ X


class ColumnNorms:
    """sq_norms (cols,) = Σ_n x_nj² over every input row seen by add_batch: ||X_j||₂² without H's O(cols²)."""

    def __init__(self, columns: int, device: torch.device | str = "cpu"):
        self.sq_norms = torch.zeros(columns, dtype=torch.float32, device=device)
        self.nsamples = 0

    def add_batch(self, X: torch.Tensor) -> None:
        X = X.reshape(-1, X.shape[-1]).to(self.sq_norms.device, torch.float32)  # (n, cols)
        self.nsamples += X.shape[0]
        self.sq_norms += X.pow(2).sum(dim=0)


def inverse_cholesky(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, int]:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = damp·mean(diag H), raising λ ×10 until it factors.

    Returns (U (cols, cols) upper triangular, retries)."""
    mean_diag = torch.diag(H).mean().abs().clamp(min=1e-8)
    # Memory: at most two (cols, cols) matrices beside H at a time; for an MLP's down projection these are
    # the largest tensors the solvers make.
    for retry in range(MAX_DAMP_RETRIES + 1):
        damped = H.clone()
        damped.diagonal().add_(damp * 10**retry * mean_diag)
        L, info = torch.linalg.cholesky_ex(damped)
        del damped
        if info == 0:
            inverse = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if info == 0 and torch.isfinite(U).all():
                return U, retry
    raise ValueError(
        f"the Hessian is not positive definite even with damp {damp * 10**MAX_DAMP_RETRIES:g}·mean(diag H); "
        "check the calibration inputs for NaN/inf"
    )


def blocked_sweep(
    W: torch.Tensor,
    Hinv: torch.Tensor,
    block_size: int,
    column: Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The column sweep GPTQ and SparseGPT share, with lazy batch updates (Frantar et al.).

    W (rows, cols) is swept one block of block_size columns at a time. Column i of the block starting at i1
    becomes q = column(i1, i, W1, Hinv1), where W1 (rows, b) is the block with the error of every earlier
    column already spread into it and Hinv1 the block's part of the upper Cholesky factor of H⁻¹. The error
    (w − q)/[H⁻¹]_ii goes to the block's later columns at once and to the columns after the block in one
    matmul per block. W is updated in place; returns Q (rows, cols)."""
    cols = W.shape[1]
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()  # (rows, b): updated in place as the block is swept
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]  # (rows,), a view: read before the update below changes it
            q = column(i1, i, W1, Hinv1)
            Q1[:, i] = q
            err1 = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err1[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # the block's error, pushed to every later column at once
    return Q


def without_dead_inputs(H: torch.Tensor, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs that were always 0 (H_jj = 0): any weight there is exact, so W[:, j] = 0 and H_jj = 1 keep H
    invertible. Returns (H, W), copied only where changed; W is a float32 copy either way."""
    W = W.float().clone()
    dead = torch.diag(H) == 0
    if dead.any():
        H = H.clone()
        H[dead, dead] = 1
        W[:, dead] = 0
    return H, W


def solve_layer(
    layer: nn.Module,
    inputs: LayerInputs,
    true_sequential: bool,
    make: Callable[[int, torch.device], Hessian | ColumnNorms],
    solve: Callable[[str, Hessian | ColumnNorms, torch.Tensor], tuple[torch.Tensor, int]],
    without_data: Callable[[str, torch.Tensor], torch.Tensor],
) -> tuple[dict[str, int], list[str]]:
    """Replace each quantizable weight W (out, in) of one decoder layer, in place, by solve(relative name, its
    collected statistics (H, or ||X_j||² for Wanda), W) -> (Ŵ, damp retries), or by without_data(name, W) where no calibration token reached
    it (an expert the router never picked). Returns (retries, unreached names), relative to the layer.

    True-sequential: group k is solved before group k+1's Hessians are collected, so later weights see the
    inputs the compressed layer will really give them; the groups come from a traced forward."""
    targets = block_linears(layer)
    stages = sequential_groups(layer, inputs) if true_sequential else [list(targets)]
    retries, unreached = {}, []
    for names in stages:
        device = weight_matrix(targets[names[0]]).device
        solvers = {name: make(in_features(targets[name]), device) for name in names}
        with collect_inputs(layer, names, lambda name, X: solvers[name].add_batch(X)):
            run_layer(layer, inputs)
        for name in names:
            solver = solvers.pop(name)  # its Hessian and factor are freed as soon as this weight is done
            W = weight_matrix(targets[name])
            if solver.nsamples == 0:
                W_hat, retries[name] = without_data(name, W), 0
                unreached.append(name)
            else:
                W_hat, retries[name] = solve(name, solver, W)
            set_weight_matrix(targets[name], None, W_hat)
            del solver, W_hat
    return retries, unreached
