"""SparseGPT on a single linear layer: output error against Wanda and magnitude, masks, joint quantization."""

import pytest
import torch

from flipbench.compress.hessian import ColumnNorms
from flipbench.compress.prune.masks import Pattern, mask_for
from flipbench.compress.prune.sparsegpt import SparseGPT, SparseGPTSettings
from flipbench.compress.prune.wanda import wanda_scores
from flipbench.compress.quant.grid import GridSpec, fit
from tests.quant.test_gptq import correlated_inputs, output_error


def shuffled_inputs(n: int, cols: int, seed: int) -> torch.Tensor:
    """correlated_inputs with the feature scales in random column order: real activations are not sorted by
    size, and SparseGPT's per-block sparsity budget assumes each block holds a mix of them."""
    X = correlated_inputs(n, cols, seed=seed)
    return X[:, torch.randperm(cols, generator=torch.Generator().manual_seed(seed))]


def collected(X: torch.Tensor, kind):
    collector = kind(X.shape[1])
    for chunk in X.split(100):
        collector.add_batch(chunk)
    return collector


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)], ids=str)
@pytest.mark.parametrize("seed", [0, 1])
def test_output_error_sparsegpt_below_wanda_below_magnitude(pattern, seed):
    X = shuffled_inputs(1024, 64, seed)
    W = torch.randn(48, 64, generator=torch.Generator().manual_seed(10 + seed))
    magnitude = W.masked_fill(mask_for(W.abs(), 0.5, pattern), 0)
    wanda = W.masked_fill(mask_for(wanda_scores(W, collected(X, ColumnNorms).sq_norms), 0.5, pattern), 0)
    sparsegpt, retries = collected(X, SparseGPT).solve(W, SparseGPTSettings(0.5, pattern, block_size=16))
    assert retries == 0
    errors = [output_error(X, W, Q) for Q in (sparsegpt, wanda, magnitude)]
    assert errors[0] < errors[1] < errors[2], errors
    for Q in (sparsegpt, wanda, magnitude):
        assert (Q == 0).float().mean().item() == pytest.approx(0.5, abs=1e-6)


def test_two_four_holds_in_every_group_after_reconstruction():
    X, W = correlated_inputs(512, 32), torch.randn(16, 32)
    Q, _ = collected(X, SparseGPT).solve(W, SparseGPTSettings(pattern=Pattern(2, 4), block_size=8))
    groups = (Q != 0).reshape(16, 8, 4).sum(dim=2)
    assert (groups == 2).all()
    assert not torch.equal(Q[Q != 0], W[Q != 0])  # the survivors were updated, not just masked


def test_unstructured_mask_is_chosen_per_block_not_per_row():
    X, W = correlated_inputs(512, 32, seed=2), torch.randn(16, 32, generator=torch.Generator().manual_seed(3))
    W[0] *= 20  # one loud row: a block-wide mask prunes it less than the quiet rows
    Q, _ = collected(X, SparseGPT).solve(W, SparseGPTSettings(0.5, block_size=16))
    for block in (slice(0, 16), slice(16, 32)):
        assert (Q[:, block] == 0).sum().item() == 16 * 16 // 2  # ⌊rows·b·s⌋ per block
    per_row = (Q == 0).float().mean(dim=1)
    assert per_row[0] < per_row[1:].mean()


def test_zero_sparsity_without_grid_changes_nothing():
    X, W = correlated_inputs(256, 16), torch.randn(8, 16)
    Q, _ = collected(X, SparseGPT).solve(W, SparseGPTSettings(0.0))
    torch.testing.assert_close(Q, W, rtol=0, atol=1e-5)


def test_joint_quantization_puts_survivors_on_the_dense_weights_grid():
    X, W = correlated_inputs(512, 32), torch.randn(8, 32)
    grid = GridSpec(bits=4)
    Q, _ = collected(X, SparseGPT).solve(W, SparseGPTSettings(pattern=Pattern(2, 4), block_size=8, grid=grid))
    scale, zero = fit(W, grid)  # the per-row grid fitted on the dense weights before the sweep
    levels = Q / scale + zero
    on_grid = (levels - levels.round()).abs() < 1e-4
    assert on_grid.all() and (levels.round() >= 0).all() and (levels.round() <= 15).all()
    assert ((Q != 0).reshape(8, 8, 4).sum(dim=2) <= 2).all()  # a survivor may also round to 0
