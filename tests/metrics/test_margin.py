"""flip_rate_by_margin(): where flips happen, by the baseline's top-1 minus top-2 probability."""

import numpy as np
import pytest

from flipbench.metrics import MARGIN_COLUMNS, flip_rate_by_margin

from .tables import gen_row, log, mc_row, table


def margin_rows():
    """target 0 throughout; base margin -> bin, flip?
        [.5, .5]   0     [0, 0.1]     tie -> base picks 0 (right), comp [.4,.6] picks 1: flip
        [.525,.475] .05  [0, 0.1]     comp identical: no flip
        [.65, .35] .3    (0.25, 0.5]  comp [.3, .7]: flip
        [.9, .1]   .8    (0.5, 1]     comp identical: no flip
        [1, 0]     1     (0.5, 1]     comp [0, 1]: flip
        NaN ll     NaN   not counted
    """
    return [
        mc_row(0, 0, log(0.5, 0.5), log(0.4, 0.6)),
        mc_row(1, 0, log(0.525, 0.475), log(0.525, 0.475)),
        mc_row(2, 0, log(0.65, 0.35), log(0.3, 0.7)),
        mc_row(3, 0, log(0.9, 0.1), log(0.9, 0.1)),
        mc_row(4, 0, [0.0, -np.inf], [-np.inf, 0.0]),
        mc_row(5, 0, [np.nan, 0.0], [0.0, -1.0]),
        gen_row(6, "1", "1", "2"),  # generative rows have no margin: ignored
    ]


def test_hand_binned_flip_rates():
    out = flip_rate_by_margin(table(margin_rows()))
    assert list(out.columns) == MARGIN_COLUMNS
    assert out["bin"].tolist() == ["[0, 0.1]", "(0.1, 0.25]", "(0.25, 0.5]", "(0.5, 1]"]
    assert out["n"].tolist() == [2, 0, 1, 2]
    assert out["flips"].tolist() == [1, 0, 1, 1]
    np.testing.assert_allclose(out["flip_rate"], [0.5, np.nan, 1.0, 0.5])
    assert set(out["task"]) == {"mc"} and set(out["metric"]) == {"acc"}


def test_custom_bins_and_metrics():
    out = flip_rate_by_margin(table(margin_rows()), bins=(0, 0.5, 1), metrics_by_task={"mc": ["acc", "acc_norm"]})
    assert out[["metric", "n", "flips"]].values.tolist() == [["acc", 3, 2], ["acc", 2, 1],
                                                              ["acc_norm", 3, 2], ["acc_norm", 2, 1]]


@pytest.mark.parametrize("bins", [(0.5,), (0, 0.5, 0.5), (1, 0)])
def test_bad_bins(bins):
    with pytest.raises(ValueError, match="bins"):
        flip_rate_by_margin(table(margin_rows()), bins)


def test_no_mc_rows():
    assert flip_rate_by_margin(table([gen_row(0, "1", "1", "1")])).empty
