"""The tiny model's training text: the synth tasks' train splits rendered by lm-eval itself, plus world text.

Rendering goes through lm-eval's own task objects (``fewshot_context`` for the prompt, the task's
``target_delimiter`` and target for the answer), so training sees exactly the strings evaluation scores.
Only train splits and ``synth_world_train.jsonl`` are read; the test splits are never opened here.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flipbench.synth.generate import TASKS


@dataclass(frozen=True)
class Example:
    """One training document: ``prompt`` (context) then ``target`` (what the task scores; may be empty)."""

    prompt: str
    target: str
    source: str  # task name, or "world:<kind>" for world text

    @property
    def text(self) -> str:
        return self.prompt + self.target


def _train_only_config(yaml_path: Path) -> dict:
    """The task's config with data files made absolute and the test split pointed at the train file.

    lm-eval resolves relative ``data_files`` against the working directory, not the YAML's folder, so they
    are anchored here; dropping the test file guarantees this module cannot read a test doc.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(str(yaml_path), resolve_func=True)
    train_file = (yaml_path.parent / cfg["dataset_kwargs"]["data_files"]["train"]).resolve()
    cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": {"train": str(train_file)}}
    cfg["test_split"] = "train"
    return cfg


def load_train_tasks(task_dir: Path) -> dict:
    """lm-eval Task objects for the four synth tasks, reading train files only."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    configs = [_train_only_config(task_dir / f"{name}.yaml") for name in TASKS]
    return get_task_dict(configs, manager)


def render(task, doc: dict) -> tuple[str, str]:
    """(prompt, target) as lm-eval writes a zero-shot prompt and a few-shot answer for ``doc``."""
    prompt = task.fewshot_context(doc, num_fewshot=0)
    target = task.doc_to_target(doc)
    if task.OUTPUT_TYPE == "multiple_choice":
        target = task.doc_to_choice(doc)[target]
    return prompt, task.config.target_delimiter + str(target)


@contextmanager
def _compiled_once():
    """lm-eval compiles a Jinja template on every call (most of the rendering time for ~30k docs); while
    rendering here, each distinct template is compiled once. The output is unchanged."""
    from lm_eval import utils

    original, compiled = utils.env, {}

    class _Cache:
        def from_string(self, source):
            if source not in compiled:
                compiled[source] = original.from_string(source)
            return compiled[source]

    utils.env = _Cache()
    try:
        yield
    finally:
        utils.env = original


def task_examples(task_dir: Path) -> list[Example]:
    """Every train doc of every synth task, rendered."""
    examples = []
    with _compiled_once():
        for name, task in load_train_tasks(task_dir).items():
            for doc in task.training_docs():
                prompt, target = render(task, doc)
                examples.append(Example(prompt, target, name))
    return examples


def world_examples(task_dir: Path) -> list[Example]:
    """The world text (fact statements, craft narratives): context only, no scored target."""
    path = task_dir / "data" / "synth_world_train.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [Example(row["text"], "", f"world:{row['kind']}") for row in rows]
