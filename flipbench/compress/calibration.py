"""Calibration data: task examples from non-evaluation splits, or a text file; tokenized into windows."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch


def doc_hash(doc) -> str:
    """The 'doc_hash' lm-eval 0.4.13 logs per sample (evaluator.py): sha256 of the doc as indented JSON."""
    from lm_eval.utils import handle_non_serializable, hash_string

    return hash_string(json.dumps(doc, indent=2, default=handle_non_serializable, ensure_ascii=False))


def _calibration_split(task) -> tuple[str, object]:
    """(split name, docs) of the task's first split that is not evaluated: train, then validation (when the
    test split is the evaluated one), then few-shot docs (when their split is not the evaluated one)."""
    evaluated = task.config.test_split if task.has_test_docs() else task.config.validation_split
    if task.has_training_docs() and task.config.training_split != evaluated:
        return task.config.training_split, task.training_docs()
    if task.has_validation_docs() and task.config.validation_split != evaluated:
        return task.config.validation_split, task.validation_docs()
    fewshot_split = task.fewshot_cfg.split
    if (fewshot_split is not None and fewshot_split != evaluated) or task.fewshot_cfg.samples is not None:
        docs = task.fewshot_docs()
        if docs is not None:
            return fewshot_split or "fewshot samples", docs
    raise ValueError(
        f"task {task.config.task!r} has no non-evaluation split (train, validation or few-shot) to calibrate on; "
        "use calibration.source=text with a text file"
    )


def render_example(task, doc) -> str:
    """The doc as the task prompts it, followed by its gold answer: doc_to_text + target_delimiter + target."""
    text, target = task.doc_to_text(doc), task.doc_to_target(doc)
    if isinstance(target, list):  # several acceptable targets: the first
        target = target[0]
    if task.config.output_type == "multiple_choice":
        choices = task.doc_to_choice(doc)
        if isinstance(text, int):  # context-choice tasks (e.g. winogrande): the text picks the context
            text = choices[text]
        elif isinstance(target, int):  # the gold choice's index
            target = choices[target]
    return f"{text}{task.config.target_delimiter}{target}"


def task_calibration_texts(tasks: dict, n_samples: int, seed: int, eval_doc_hashes: set[str] | None) -> list[str]:
    """n_samples rendered examples drawn evenly over tasks ({name: lm_eval Task}) from their non-evaluation
    splits; tasks without one are left out, and ValueError is raised only when no task has one. eval_doc_hashes: the evaluated docs' lm-eval doc hashes (None: each task's whole eval split);
    an example whose doc is also evaluated raises ValueError."""
    rng = random.Random(seed)
    pools, missing = {}, []
    for name, task in tasks.items():
        try:
            pools[name] = _calibration_split(task)
        except ValueError as err:  # e.g. a task whose only local split is the evaluated one: the others calibrate
            missing.append(err)
    if not pools:
        raise missing[0]
    per_task = -(-n_samples // len(pools))
    drawn = []
    for name, (split, docs) in pools.items():
        task = tasks[name]
        docs = docs if hasattr(docs, "__getitem__") and hasattr(docs, "__len__") else list(docs)
        evaluated = eval_doc_hashes if eval_doc_hashes is not None else {doc_hash(d) for d in task.eval_docs}
        indices = rng.sample(range(len(docs)), min(per_task, len(docs)))
        texts = []
        for index in indices:
            doc = docs[index]
            if doc_hash(doc) in evaluated:
                raise ValueError(
                    f"task {name!r}: calibration doc {index} of split {split!r} is also an evaluated doc "
                    f"({str(doc)[:80]!r}); calibrate on data disjoint from the evaluation docs"
                )
            texts.append(render_example(task, doc))
        drawn.append(texts)
    interleaved = [texts[i] for i in range(per_task) for texts in drawn if i < len(texts)]
    return interleaved[:n_samples]


def text_file_calibration_texts(path) -> list[str]:
    """The paragraphs (blank-line separated) of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"calibration text file {str(path)!r} does not exist; set calibration.path to a text file")
    paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")]
    paragraphs = [p for p in paragraphs if p]
    if not paragraphs:
        raise ValueError(f"calibration text file {str(path)!r} is empty; give it some representative text")
    return paragraphs


def tokenize_calibration(tokenizer, texts: list[str], n_samples: int, seq_len: int, seed: int) -> torch.LongTensor:
    """(n_samples, seq_len) token ids: windows at seeded random offsets into the texts, shuffled and joined
    with the tokenizer's EOS (when it has one) into one stream; a stream shorter than seq_len is repeated."""
    if not texts:
        raise ValueError("no calibration texts to tokenize; check the calibration source")
    rng = random.Random(seed)
    order = list(texts)
    rng.shuffle(order)
    separator = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    stream = []
    for ids in tokenizer(order, add_special_tokens=False)["input_ids"]:
        stream += ids + separator
    if not stream:
        raise ValueError("the calibration texts tokenize to nothing; check the calibration source")
    stream = stream * -(-seq_len // len(stream))
    starts = [rng.randrange(len(stream) - seq_len + 1) for _ in range(n_samples)]
    return torch.tensor([stream[s : s + seq_len] for s in starts], dtype=torch.long)
