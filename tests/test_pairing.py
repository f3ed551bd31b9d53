"""Pairing joins the two sides on (task, group, doc_id, filter) and refuses unlike documents or prompts."""

import pandas as pd
import pytest

from flipbench.pairing import PairingError, pair


def side(preds, correct, prompt_hash="p", ll=None):
    n = len(preds)
    return pd.DataFrame({
        "task": ["t"] * n, "group": ["g"] * n, "category": [""] * n, "doc_id": list(range(n)), "filter": ["none"] * n,
        "output_type": ["multiple_choice"] * n, "metric": ["acc"] * n, "doc_hash": [f"d{i}" for i in range(n)],
        "prompt_hash": [prompt_hash] * n, "prompt": [f"q{i}" for i in range(n)], "target": ["0"] * n,
        "choices": [["a", "b"]] * n, "choice_len": [[1, 1]] * n, "ll": ll or [[-1.0, -2.0]] * n,
        "ll_uncond": [[]] * n, "pred": preds, "correct": correct, "lm_correct": ['{"acc": 1.0}'] * n,
        "response": [""] * n,
    })


def test_pair_aligns_rows_by_key_even_when_shuffled():
    base = side(["0", "1", "0"], [1, 0, 1])
    comp = side(["0", "0", "1"], [1, 1, 0]).iloc[::-1]
    paired = pair(base, comp)
    assert paired["doc_id"].tolist() == [0, 1, 2]
    assert paired["pred_base"].tolist() == ["0", "1", "0"]
    assert paired["pred_comp"].tolist() == ["0", "0", "1"]
    assert paired["correct_comp"].tolist() == [1, 1, 0]
    assert paired["prompt"].tolist() == ["q0", "q1", "q2"]


def test_prompt_hash_mismatch_is_refused():
    with pytest.raises(PairingError, match="prompt_hash differs"):
        pair(side(["0"], [1]), side(["0"], [1], prompt_hash="other"))


def test_one_sided_docs_are_refused():
    with pytest.raises(PairingError, match="one side only"):
        pair(side(["0", "1"], [1, 0]), side(["0"], [1]))


def test_duplicate_rows_are_refused():
    base = side(["0", "1"], [1, 0])
    with pytest.raises(PairingError, match="duplicate"):
        pair(pd.concat([base, base]), base)
