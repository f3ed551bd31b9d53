"""Grids and RTN against values worked out by hand (see each case's comment)."""

import pytest
import torch

from flipbench.compress.quant.grid import GridSpec, fit, fit_masked, quantize, rtn

CASES = [
    pytest.param(
        # bits 2 (levels 0..3), asymmetric, one grid per row:
        # row 0: range [-1, 2] -> scale 1, zero 1; -1->-1, 0.2->0, 0.9->1, 2->2
        # row 1: all positive, range [0, 1.2] (0 included) -> scale 0.4, zero 0; 0.3/0.4=.75->1, 0.65/0.4=1.625->2,
        #        1.2->3, 0.1/0.4=.25->0
        # row 2: all negative, range [-0.9, 0] -> scale 0.3, zero 3; -0.9->0, -0.3->2, -0.5/0.3=-1.67->-2+3=1, -0.05->3
        [[-1.0, 0.2, 0.9, 2.0], [0.3, 0.65, 1.2, 0.1], [-0.9, -0.3, -0.5, -0.05]],
        GridSpec(bits=2),
        -1,
        [[-1.0, 0.0, 1.0, 2.0], [0.4, 0.8, 1.2, 0.0], [-0.9, -0.3, -0.6, 0.0]],
        id="asym-per-channel",
    ),
    pytest.param(
        # bits 3 symmetric, as the reference GPTQ: scale = 2·absmax/7, zero 4 (not stored), levels -4..3 × scale
        # row 0: absmax 2 -> scale 4/7; -1.1/(4/7)=-1.925->-2, 0.2->0.35->0, 0.9->1.575->2, 2->3.5->4 clipped to 3
        # row 1: absmax 3 -> scale 6/7; -3->-3.5->-4 (half to even), 1->1.17->1, 0.4->0.47->0, -2.2->-2.57->-3
        [[-1.1, 0.2, 0.9, 2.0], [-3.0, 1.0, 0.4, -2.2]],
        GridSpec(bits=3, sym=True),
        -1,
        [[-8 / 7, 0.0, 8 / 7, 12 / 7], [-24 / 7, 6 / 7, 0.0, -18 / 7]],
        id="sym-per-channel",
    ),
    pytest.param(
        # bits 2 asymmetric, groups of 3 columns:
        # group 1 [-0.6, 0.1, 0.3]: scale 0.9/3=0.3, zero 2; 0.1/0.3=.33->0 -> 0
        # group 2 [1.0, 2.6, 1.9]: range [0, 2.6] -> scale 2.6/3, zero 0; 1/.8667=1.15->1, 2.6->3, 1.9/.8667=2.19->2
        [[-0.6, 0.1, 0.3, 1.0, 2.6, 1.9]],
        GridSpec(bits=2),
        3,
        [[-0.6, 0.0, 0.3, 2.6 / 3, 2.6, 2 * 2.6 / 3]],
        id="asym-grouped",
    ),
    pytest.param(
        # ragged groups: 5 columns in groups of 3 -> [3 columns, 2 columns]; the first group as above,
        # group 2 [1.0, 2.6]: range [0, 2.6] -> scale 2.6/3, zero 0; 1/.8667=1.15->1, 2.6->3
        [[-0.6, 0.1, 0.3, 1.0, 2.6]],
        GridSpec(bits=2),
        3,
        [[-0.6, 0.0, 0.3, 2.6 / 3, 2.6]],
        id="asym-ragged",
    ),
]


@pytest.mark.parametrize("W, spec, group_size, expected", CASES)
def test_rtn_matches_hand_computed_values(W, spec, group_size, expected):
    Q = rtn(torch.tensor(W), spec, group_size)
    torch.testing.assert_close(Q, torch.tensor(expected), atol=1e-6, rtol=0)


def test_rtn_keeps_dtype_and_shape():
    W = torch.randn(8, 16, dtype=torch.bfloat16)
    Q = rtn(W, GridSpec(bits=4), 8)
    assert Q.dtype == torch.bfloat16 and Q.shape == W.shape


def test_zero_is_always_exactly_representable():
    W = torch.rand(16, 32) + 0.5  # all positive: min-max alone would not include 0
    scale, zero = fit(W, GridSpec(bits=3))
    assert torch.all(quantize(torch.zeros(16, 1), scale, zero, 7) == 0)


def test_all_zero_row_stays_zero():
    W = torch.zeros(2, 4)
    for spec in (GridSpec(bits=4), GridSpec(bits=4, sym=True), GridSpec(bits=4, mse=True)):
        assert torch.equal(rtn(W, spec), W)


def test_mse_search_clips_an_outlier_and_lowers_error():
    # twenty 0.9s and a 3.0 at 2 bits. Min-max: range [0, 3], scale 1, every 0.9 -> 1: error 20·0.1² = 0.2.
    # Shrink 0.9: range [0, 2.7], scale 0.9, the 0.9s are exact and 3.0 clips to 2.7: error 0.3² = 0.09.
    W = torch.tensor([[0.9] * 20 + [3.0]])
    minmax = (rtn(W, GridSpec(bits=2)) - W).pow(2).sum()
    mse = (rtn(W, GridSpec(bits=2, mse=True)) - W).pow(2).sum()
    assert minmax.item() == pytest.approx(0.2, abs=1e-5)
    assert mse.item() <= 0.09 + 1e-5


def test_masked_fit_ignores_kept_outlier():
    # row [-1, 2, 100]: with the 100 kept in 16-bit it is replaced by the mean of the others (0.5), so the grid
    # is fitted on [-1, 2, 0.5]: range [-1, 2] at 2 bits -> scale 1, zero 1.
    W = torch.tensor([[-1.0, 2.0, 100.0]])
    keep = torch.tensor([[False, False, True]])
    scale, zero = fit_masked(W, GridSpec(bits=2), keep)
    assert scale.item() == pytest.approx(1.0) and zero.item() == 1


@pytest.mark.parametrize("norm", [2.0, 2.4])
def test_mse_search_minimises_the_chosen_norm_over_80_shrink_steps(norm):
    # brute force, per row: p = 1 - i/100 for i < 80, grid fitted on [p·xmin, p·xmax], error Σ|q − w|^norm
    W = torch.randn(6, 40, generator=torch.Generator().manual_seed(0)) ** 3  # heavy tails: shrinking pays
    spec = GridSpec(bits=3, mse=True, mse_norm=norm)
    scale, zero = fit(W, spec)
    for row, w in enumerate(W):
        xmin, xmax = min(w.min().item(), 0.0), max(w.max().item(), 0.0)
        best = None
        for i in range(80):
            p = 1 - i / 100
            s_p = (p * xmax - p * xmin) / 7
            z_p = round(-p * xmin / s_p)
            err = (quantize(w, torch.tensor(s_p), torch.tensor(float(z_p)), 7) - w).abs().pow(norm).sum().item()
            if best is None or err < best[0]:
                best = (err, s_p, z_p)
        assert scale[row].item() == pytest.approx(best[1], rel=1e-5) and zero[row].item() == best[2]


def test_norm_changes_the_chosen_shrink():
    # the same heavy-tailed rows: |err|^2.4 weighs the clipped outliers more than squared error does
    W = torch.randn(32, 40, generator=torch.Generator().manual_seed(0)) ** 3
    squared = fit(W, GridSpec(bits=3, mse=True, mse_norm=2.0))[0]
    reference = fit(W, GridSpec(bits=3, mse=True, mse_norm=2.4))[0]
    assert not torch.equal(squared, reference)
    assert (reference >= squared).float().mean() > 0.5  # a higher norm clips less, so the step is wider


def test_symmetric_grid_is_the_reference_one():
    # scale = 2·absmax/maxq, zero = (maxq + 1)/2 for every row, whatever its sign pattern
    W = torch.tensor([[-3.0, 1.0, 2.0], [0.5, -0.25, 0.0]])
    scale, zero = fit(W, GridSpec(bits=4, sym=True))
    torch.testing.assert_close(scale.flatten(), torch.tensor([6 / 15, 1 / 15]))
    assert zero.flatten().tolist() == [8.0, 8.0]
