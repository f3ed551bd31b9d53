"""Tiny lm-eval multiple-choice tasks over local JSONL files (nothing is downloaded)."""

from __future__ import annotations

import json


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
