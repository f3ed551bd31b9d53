"""Calibration texts (task splits that are not evaluated, or a text file) and their tokenization."""

from itertools import permutations

import pytest
import torch

from flipbench.compress.calibration import (
    doc_hash,
    task_calibration_texts,
    text_file_calibration_texts,
    tokenize_calibration,
)
from .tiny_tasks import make_task, mc_rows
from .tiny_models import tiny_model


def test_windows_are_seeded_slices_of_the_token_stream(char_tokenizer):
    texts = ["alpha beta", "gamma delta epsilon", "zeta"]
    ids = tokenize_calibration(char_tokenizer, texts, n_samples=5, seq_len=8, seed=0)
    assert ids.shape == (5, 8) and ids.dtype == torch.long
    assert torch.equal(ids, tokenize_calibration(char_tokenizer, texts, 5, 8, seed=0))
    assert not torch.equal(ids, tokenize_calibration(char_tokenizer, texts, 5, 8, seed=1))
    # the stream is the texts in some (seeded) order, each followed by EOS: 10 + 19 + 4 characters + 3 EOS = 36
    eos = char_tokenizer.eos_token_id
    encode = lambda text: char_tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    streams = [[t for text in order for t in encode(text)] for order in permutations(texts)]
    assert {len(stream) for stream in streams} == {36}
    windows = [{tuple(stream[i : i + 8]) for i in range(36 - 8 + 1)} for stream in streams]
    assert any(all(tuple(row) in w for row in ids.tolist()) for w in windows)


def test_short_text_is_repeated_to_fill_a_window(char_tokenizer):
    ids = tokenize_calibration(char_tokenizer, ["abc"], n_samples=2, seq_len=10, seed=0)
    a, b, c, eos = (char_tokenizer.convert_tokens_to_ids(t) for t in ("a", "b", "c", "</s>"))
    cycle = [a, b, c, eos]
    for row in ids.tolist():
        start = cycle.index(row[0])
        assert row == [cycle[(start + i) % 4] for i in range(10)]


def test_task_examples_come_from_train_with_prompt_and_gold_choice(tmp_path):
    task = make_task(tmp_path, "toy", {"train": mc_rows("train", 6), "test": mc_rows("test", 4)},
                     training_split="train", test_split="test")
    texts = task_calibration_texts({"toy": task}, n_samples=6, seed=0, eval_doc_hashes=None)
    gold = ["red", "blue", "green"]
    assert sorted(texts) == sorted(f"Q: train question {i}?\nA: {gold[i % 3]}" for i in range(6))
    assert texts == task_calibration_texts({"toy": task}, 6, seed=0, eval_doc_hashes=None)


def test_validation_split_is_used_when_test_is_evaluated(tmp_path):
    task = make_task(tmp_path, "toy", {"validation": mc_rows("val", 3), "test": mc_rows("test", 3)},
                     validation_split="validation", test_split="test")
    texts = task_calibration_texts({"toy": task}, n_samples=2, seed=0, eval_doc_hashes=set())
    assert len(texts) == 2 and all(t.startswith("Q: val question") for t in texts)


def test_examples_interleave_tasks(tmp_path):
    tasks = {
        name: make_task(tmp_path, name, {"train": mc_rows(name, 5), "test": mc_rows("t", 2)},
                        training_split="train", test_split="test")
        for name in ("one", "two")
    }
    texts = task_calibration_texts(tasks, n_samples=4, seed=0, eval_doc_hashes=set())
    assert [t.split()[1] for t in texts] == ["one", "two", "one", "two"]


def test_calibration_doc_that_is_also_evaluated_raises(tmp_path):
    shared = mc_rows("shared", 1)
    task = make_task(tmp_path, "leaky", {"train": shared, "test": shared + mc_rows("test", 2)},
                     training_split="train", test_split="test")
    with pytest.raises(ValueError, match=r"task 'leaky': calibration doc 0 of split 'train' is also an evaluated doc"):
        task_calibration_texts({"leaky": task}, n_samples=1, seed=0, eval_doc_hashes=None)
    hashes = {doc_hash(doc) for doc in task.eval_docs}
    with pytest.raises(ValueError, match="also an evaluated doc"):
        task_calibration_texts({"leaky": task}, n_samples=1, seed=0, eval_doc_hashes=hashes)


def test_task_without_a_non_evaluation_split_raises(tmp_path):
    task = make_task(tmp_path, "only_test", {"test": mc_rows("test", 3)}, test_split="test")
    with pytest.raises(ValueError, match=r"task 'only_test' has no non-evaluation split"):
        task_calibration_texts({"only_test": task}, n_samples=1, seed=0, eval_doc_hashes=None)


def test_tasks_without_a_non_evaluation_split_are_left_out_when_another_has_one(tmp_path):
    tasks = {"only_test": make_task(tmp_path, "only_test", {"test": mc_rows("t", 3)}, test_split="test"),
             "trained": make_task(tmp_path, "trained", {"train": mc_rows("tr", 5), "test": mc_rows("t", 2)},
                                  training_split="train", test_split="test")}
    texts = task_calibration_texts(tasks, n_samples=4, seed=0, eval_doc_hashes=set())
    assert len(texts) == 4 and all(t.startswith("Q: tr question") for t in texts)


@pytest.mark.slow  # a full lm-eval run to read its logged hashes (~14 s); two-phase and foreign tests pair on them too
def test_doc_hash_is_the_one_lm_eval_logs(tmp_path, char_tokenizer):
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    task = make_task(tmp_path, "hashes", {"train": mc_rows("train", 2), "test": mc_rows("test", 2)},
                     training_split="train", test_split="test")
    lm = HFLM(pretrained=tiny_model("llama"), tokenizer=char_tokenizer, batch_size=1)
    results = lm_eval.simple_evaluate(model=lm, tasks=[task], log_samples=True, limit=2)
    logged = [sample["doc_hash"] for sample in results["samples"]["hashes"]]
    assert logged == [doc_hash(doc) for doc in task.eval_docs]


def test_text_file_paragraphs(tmp_path):
    path = tmp_path / "general.txt"
    path.write_text("First paragraph,\nstill first.\n\n\n  Second one.  \n\n")
    assert text_file_calibration_texts(path) == ["First paragraph,\nstill first.", "Second one."]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="is empty"):
        text_file_calibration_texts(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="does not exist"):
        text_file_calibration_texts(tmp_path / "missing.txt")
