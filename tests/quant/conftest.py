"""Fixtures for the quantization tests: one torch thread, a character tokenizer, a tiny lm-eval task."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny matmuls are ~40× slower with 2 threads on a busy 2-core machine; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def char_tokenizer():
    """A real fast tokenizer, one token per character (ids < 128, the tiny models' vocab), built offline."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {"<unk>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="</s>")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def mc_rows(prefix: str, n: int) -> list[dict]:
    choices = ["red", "blue", "green"]
    return [{"question": f"{prefix} question {i}?", "choices": choices, "answer": i % 3} for i in range(n)]


def make_task(tmp_path, name: str, splits: dict[str, list[dict]], **config):
    """An lm-eval multiple-choice task over local JSONL splits; config names which split plays which role."""
    from lm_eval.api.task import ConfigurableTask

    files = {split: write_jsonl(tmp_path / f"{name}_{split}.jsonl", rows) for split, rows in splits.items()}
    return ConfigurableTask(
        config=dict(
            task=name,
            dataset_path="json",
            dataset_kwargs={"data_files": files, "cache_dir": str(tmp_path / "hf_datasets")},
            output_type="multiple_choice",
            doc_to_text="Q: {{question}}\nA:",
            doc_to_target="answer",
            doc_to_choice="{{choices}}",
            **config,
        )
    )
