"""predictions(): MC rescoring under acc / acc_norm from the stored log-likelihoods; generative pass-through."""

import numpy as np
import pytest

from flipbench.metrics import predictions

from .tables import gen_row, mc_row, table


@pytest.mark.parametrize("ll, choice_len, target, metric, pred, correct", [
    # acc: argmax ll = 0; acc_norm: ll / len = [-2, -1] -> 1. The two rules disagree.
    ([-4.0, -6.0], [2, 6], 1, "acc", "0", 0),
    ([-4.0, -6.0], [2, 6], 1, "acc_norm", "1", 1),
    # 3 choices: ll / len = [-1.5, -1.25, -3] -> 1; acc -> 2 (-3 is the largest ll)
    ([-6.0, -5.0, -3.0], [4, 4, 1], 2, "acc", "2", 1),
    ([-6.0, -5.0, -3.0], [4, 4, 1], 2, "acc_norm", "1", 0),
    # ties go to the lowest index, as np.argmax (and lm-eval) does
    ([-1.0, -1.0], [3, 3], 1, "acc", "0", 0),
    ([-2.0, -4.0], [1, 2], 0, "acc_norm", "0", 1),
])
def test_mc_rescoring(ll, choice_len, target, metric, pred, correct):
    samples = table([mc_row(0, target, ll, ll, choice_len=choice_len)])
    for side in ("base", "comp"):
        got_pred, got_correct = predictions(samples, side, metric)
        assert list(got_pred) == [pred] and list(got_correct) == [correct]


def test_sides_are_scored_from_their_own_ll_and_ragged_rows_keep_order():
    samples = table([
        mc_row(0, 1, [-4.0, -6.0], [-9.0, -6.0], choice_len=[2, 6]),
        mc_row(1, 0, [-1.0, -2.0, -3.0], [-3.0, -2.0, -1.0], choice_len=[1, 1, 1]),
        mc_row(2, 1, [-4.0, -6.0], [-4.0, -6.0], choice_len=[2, 6]),
    ])
    assert list(predictions(samples, "base", "acc")[0]) == ["0", "0", "0"]
    assert list(predictions(samples, "comp", "acc")[0]) == ["1", "2", "0"]
    pred, correct = predictions(samples, "base", "acc_norm")
    assert list(pred) == ["1", "0", "1"] and list(correct) == [1, 1, 1]
    assert correct.dtype.kind == "i"


def test_generative_rows_use_stored_predictions():
    samples = table([gen_row(0, "4", "4", "[invalid]"), gen_row(1, "7", "6", "7")])
    pred, correct = predictions(samples, "comp", "exact_match")
    assert list(pred) == ["[invalid]", "7"] and list(correct) == [0, 1]


def test_nan_ll_follows_np_argmax():
    samples = table([mc_row(0, 0, [0.0, -1.0], [-1.0, np.nan])])
    pred, correct = predictions(samples, "comp", "acc")
    assert list(pred) == [str(np.argmax([-1.0, np.nan]))]  # NaN wins argmax, as lm-eval would score it


def test_errors():
    samples = table([mc_row(0, 0, [0.0, -1.0], [0.0, -1.0])])
    with pytest.raises(ValueError, match="multiple-choice"):
        predictions(samples, "base", "exact_match")
    with pytest.raises(ValueError, match="side"):
        predictions(samples, "left", "acc")
