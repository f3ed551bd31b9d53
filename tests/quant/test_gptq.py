"""GPTQ on a single linear layer: error against RTN, degenerate Hessians, keep masks, exact special cases."""

import pytest
import torch

from flipbench.compress.quant.gptq import GPTQ, GPTQSettings
from flipbench.compress.quant.grid import GridSpec, fit_masked, rtn


def correlated_inputs(n: int, cols: int, seed: int = 0) -> torch.Tensor:
    """(n, cols) inputs with correlated, unevenly scaled features, as activations are."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=g) / cols**0.5
    return torch.randn(n, cols, generator=g) @ mixing * torch.logspace(-1, 1, cols)


def solver_for(X: torch.Tensor) -> GPTQ:
    solver = GPTQ(X.shape[1])
    for chunk in X.split(100):  # several batches: H must be the running 2/N Σ x xᵀ
        solver.add_batch(chunk)
    return solver


def output_error(X, W, Q):
    return (X @ W.t() - X @ Q.t()).pow(2).sum().item()


def test_add_batch_gives_two_over_n_sum_of_outer_products():
    X = torch.randn(250, 8)
    torch.testing.assert_close(solver_for(X).H, 2 / 250 * X.t() @ X, rtol=1e-5, atol=1e-5)


SETTINGS = {
    "per-channel": dict(),
    "dynamic-groups": dict(group_size=16),
    "static-groups": dict(group_size=16, static_groups=True),
    "act-order": dict(act_order=True),
    "act-order-static": dict(group_size=16, act_order=True, static_groups=True),
    "act-order-dynamic": dict(group_size=16, act_order=True),
    "small-blocks": dict(block_size=8, group_size=16),
    # ragged: 64 (or 32) columns in groups of 24 -> 24, 24, 16 (or 24, 8): a narrower last group
    "ragged-dynamic": dict(group_size=24),
    "ragged-static": dict(group_size=24, static_groups=True),
    "ragged-act-order": dict(group_size=24, act_order=True),
    "ragged-act-order-static": dict(group_size=24, act_order=True, static_groups=True),
    "ragged-small-blocks": dict(block_size=8, group_size=24),
}


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_gptq_output_error_below_rtn(name, bits, sym):
    X, W = correlated_inputs(512, 64), torch.randn(32, 64)
    settings = GPTQSettings(grid=GridSpec(bits=bits, sym=sym), **SETTINGS[name])
    Q, retries = solver_for(X).solve(W, settings)
    assert retries == 0
    assert output_error(X, W, Q) < output_error(X, W, rtn(W, settings.grid, settings.group_size))


@pytest.mark.parametrize("name", list(SETTINGS))
def test_diagonal_hessian_reduces_to_rtn(name):
    # orthogonal inputs: H (and so H⁻¹ and its Cholesky factor) is diagonal, no error is propagated, and
    # every column is rounded on its own: exactly RTN, whatever the column order (checks un-permuting).
    X = torch.diag(torch.arange(1.0, 33.0)).repeat(2, 1)  # (64, 32)
    W = torch.randn(8, 32)
    settings = GPTQSettings(grid=GridSpec(bits=3), **SETTINGS[name])
    Q, _ = solver_for(X).solve(W, settings)
    expected = rtn(W, settings.grid, settings.group_size)
    if settings.act_order and not settings.static_groups:
        # dynamic groups are consecutive in the swept order: largest H_jj first, here the columns reversed
        expected = rtn(W.flip(1), settings.grid, settings.group_size).flip(1)
    torch.testing.assert_close(Q, expected, rtol=0, atol=1e-6)


def test_dead_input_column_is_zeroed_without_crashing():
    X = correlated_inputs(256, 16)
    X[:, 3] = 0
    Q, _ = solver_for(X).solve(torch.randn(4, 16), GPTQSettings(grid=GridSpec(bits=4)))
    assert torch.isfinite(Q).all() and torch.all(Q[:, 3] == 0)


def test_indefinite_hessian_is_damped_until_it_factors():
    # H = [[1, 3], [3, 1]] has eigenvalues −2 and 4; mean(diag H) = 1, so λ = 0.01, 0.1, 1 leave an
    # eigenvalue ≤ −1 and the 4th try, λ = 10, succeeds: 3 retries.
    solver = GPTQ(2)
    solver.H = torch.tensor([[1.0, 3.0], [3.0, 1.0]])
    Q, retries = solver.solve(torch.randn(4, 2), GPTQSettings(grid=GridSpec(bits=4)))
    assert retries == 3 and torch.isfinite(Q).all()


def test_nan_hessian_raises_one_clear_error():
    solver = GPTQ(2)
    solver.H = torch.full((2, 2), float("nan"))
    with pytest.raises(ValueError, match="not positive definite"):
        solver.solve(torch.randn(4, 2), GPTQSettings(grid=GridSpec(bits=4)))


def test_keeping_everything_changes_nothing():
    X, W = correlated_inputs(256, 32), torch.randn(8, 32)
    Q, _ = solver_for(X).solve(W, GPTQSettings(grid=GridSpec(bits=2)), torch.ones_like(W, dtype=torch.bool))
    assert torch.equal(Q, W)


def test_kept_entries_are_off_grid_and_the_rest_on_the_masked_grid():
    X, W = correlated_inputs(256, 32), torch.randn(8, 32)
    keep = torch.zeros_like(W, dtype=torch.bool)
    keep[torch.arange(8), torch.randint(0, 32, (8,), generator=torch.Generator().manual_seed(1))] = True
    keep[:, 0] = True  # the first column is swept first, before any error reaches it: kept values stay W's
    Q, _ = solver_for(X).solve(W, GPTQSettings(grid=GridSpec(bits=3)), keep)

    # per-channel grid, fitted before the sweep on W with kept entries replaced by the row mean of the rest
    mean = (W * ~keep).sum(1, keepdim=True) / (~keep).sum(1, keepdim=True)
    W_fit = torch.where(keep, mean, W)
    xmin, xmax = W_fit.min(1, keepdim=True).values.clamp(max=0), W_fit.max(1, keepdim=True).values.clamp(min=0)
    scale = (xmax - xmin) / 7
    zero = torch.round(-xmin / scale)
    scale_check, zero_check = fit_masked(W, GridSpec(bits=3), keep)
    torch.testing.assert_close(scale_check, scale)
    torch.testing.assert_close(zero_check, zero)

    levels = Q / scale + zero  # integers in [0, 7] on the grid
    on_grid = ((levels - levels.round()).abs() < 1e-4) & (levels.round() >= 0) & (levels.round() <= 7)
    assert on_grid[~keep].all()
    assert not on_grid[keep].any()
    assert torch.equal(Q[:, 0], W[:, 0])


@pytest.mark.parametrize("act_order", [False, True])
def test_second_solve_reuses_the_factorization_and_matches_a_fresh_solver(act_order):
    X = correlated_inputs(512, 32, seed=3)
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(4))
    settings = GPTQSettings(grid=GridSpec(bits=3), act_order=act_order)
    keep = torch.rand(16, 32, generator=torch.Generator().manual_seed(5)) < 0.05
    solver = solver_for(X)
    solver.solve(W, settings)
    factor = solver._factor
    masked = solver.solve(W, settings, keep)[0]
    assert solver._factor is factor  # reused, not recomputed
    assert torch.equal(masked, solver_for(X).solve(W, settings, keep)[0])
    # other damping, or more inputs, refactor
    solver.solve(W, GPTQSettings(grid=GridSpec(bits=3), act_order=act_order, damp=0.1))
    assert solver._factor is not factor
    solver.add_batch(X[:8])
    assert solver._factor is None
