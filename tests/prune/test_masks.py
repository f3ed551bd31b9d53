"""Masks on small matrices worked out by hand: magnitude (per row, global), Wanda, N:M per group."""

import pytest
import torch

from flipbench.compress.hessian import ColumnNorms
from flipbench.compress.prune.masks import Pattern, global_masks, mask_for, nm_mask, parse_pattern, row_mask
from flipbench.compress.prune.wanda import wanda_scores

W = torch.tensor([[1.0, -5.0, 2.0, 0.5], [3.0, -0.1, -4.0, 2.5]])


def test_magnitude_per_row_removes_the_smallest_half_of_each_row():
    # row 0: |1| |5| |2| |0.5| -> drop 0.5 and 1; row 1: 3 0.1 4 2.5 -> drop 0.1 and 2.5
    expected = torch.tensor([[True, False, False, True], [False, True, False, True]])
    assert torch.equal(row_mask(W.abs(), 0.5), expected)
    # 25%: one per row (floor(4 · 0.25) = 1)
    one_per_row = torch.tensor([[False, False, False, True], [False, True, False, False]])
    assert torch.equal(row_mask(W.abs(), 0.25), one_per_row)
    assert not row_mask(W.abs(), 0.0).any()


def test_magnitude_global_ranks_across_matrices():
    other = torch.tensor([[0.2, 6.0], [0.3, 0.05]])
    masks = global_masks([W.abs(), other.abs()], 0.5)  # 12 weights -> the 6 smallest: .05 .1 .2 .3 .5 1
    assert torch.equal(masks[0], torch.tensor([[True, False, False, True], [False, True, False, False]]))
    assert torch.equal(masks[1], torch.tensor([[True, False], [True, True]]))


def test_wanda_weighs_magnitude_by_input_norm():
    X = torch.tensor([[6.0, 0.1, 0.0, 2.0], [8.0, 0.0, 1.0, 0.0]])  # column norms 10, 0.1, 1, 2
    norms = ColumnNorms(4)
    norms.add_batch(X[:1])
    norms.add_batch(X[1:])
    torch.testing.assert_close(norms.sq_norms, torch.tensor([100.0, 0.01, 1.0, 4.0]))
    scores = wanda_scores(W, norms.sq_norms)
    # row 0: 10, 0.5, 2, 1 -> drop cols 1 and 3; row 1: 30, 0.01, 4, 5 -> drop cols 1 and 2
    torch.testing.assert_close(scores, torch.tensor([[10.0, 0.5, 2.0, 1.0], [30.0, 0.01, 4.0, 5.0]]))
    assert torch.equal(row_mask(scores, 0.5), torch.tensor([[False, True, False, True], [False, True, True, False]]))
    # magnitude alone would keep the large weight -5 on the near-silent input 1 and drop the 1 on input 0
    assert not torch.equal(row_mask(scores, 0.5), row_mask(W.abs(), 0.5))


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_keeps_the_n_largest_of_every_group(n, m):
    score = torch.rand(6, 4 * m, generator=torch.Generator().manual_seed(n + m))
    pruned = nm_mask(score, Pattern(n, m))
    for row in range(score.shape[0]):
        for g in range(0, score.shape[1], m):
            group, kept = score[row, g : g + m], ~pruned[row, g : g + m]
            assert int(kept.sum()) == n
            assert set(torch.topk(group, n).indices.tolist()) == set(torch.nonzero(kept).flatten().tolist())


def test_nm_by_hand_and_mask_for_dispatch():
    # groups [1 -5 2 .5] and [3 -.1 -4 2.5] under 2:4 by magnitude: keep -5, 2 and 3, -4
    expected = torch.tensor([[True, False, False, True], [False, True, False, True]])
    assert torch.equal(mask_for(W.abs(), 0.9, Pattern(2, 4)), expected)  # sparsity is ignored under N:M
    assert Pattern(2, 4).sparsity == 0.5 and str(Pattern(4, 8)) == "4:8" and str(Pattern()) == "unstructured"


@pytest.mark.parametrize("text,expected", [("unstructured", Pattern()), ("2:4", Pattern(2, 4)), ("4:8", Pattern(4, 8))])
def test_parse_pattern(text, expected):
    assert parse_pattern(text) == expected


@pytest.mark.parametrize("text", ["4:2", "2:2", "0:4", "2-4", "two:four", "124"])
def test_parse_pattern_rejects_nonsense_with_the_fix(text):
    with pytest.raises(ValueError, match="use unstructured or N:M"):
        parse_pattern(text)
