"""Air-gapped evaluation: run an lm-eval task's own processing over a local file in its hub dataset's schema.

``suite.data_files.<task>=<path>`` swaps only where the rows come from; prompts, filters and metrics stay
lm-eval's. The file is checked for the fields the task reads before any model loads.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flipbench.config import ConfigError

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

# Fields each hub dataset's lm-eval task reads (its YAML templates and process_docs).
HUB_SCHEMAS = {
    "cais/mmlu": ["question", "subject", "choices", "answer"],
    "Rowan/hellaswag": ["activity_label", "ctx_a", "ctx_b", "endings", "label"],
    "allenai/ai2_arc": ["question", "choices", "answerKey"],
    "openai/gsm8k": ["question", "answer"],
}
# Fields that hold a list or a mapping: csv cannot carry them, and a stringified one must not reach a template.
NESTED_FIELDS = {"cais/mmlu": ["choices"], "Rowan/hellaswag": ["endings"], "allenai/ai2_arc": ["choices"]}
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


class SubjectFilter:
    """process_docs for one MMLU subject from a file holding them all (a stable repr keeps cache keys stable)."""

    def __init__(self, subject: str):
        self.subject = subject

    def __call__(self, dataset):
        return dataset.filter(lambda doc: doc["subject"] == self.subject)

    def __repr__(self) -> str:
        return f"SubjectFilter({self.subject!r})"


def read_table(path: Path) -> pd.DataFrame:
    fmt = FORMATS.get(path.suffix.lower())
    try:
        if fmt == "json":
            return pd.read_json(path, lines=path.suffix.lower() == ".jsonl")
        if fmt == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (ValueError, OSError) as err:
        raise ConfigError(f"data file {path} could not be read as {fmt} ({str(err).splitlines()[0]}); "
                          "check the file's format") from None


def check_file(task: str, dataset_path: str, path: Path) -> pd.DataFrame:
    """The file exists, has a known format and carries the fields the task reads."""
    if not path.is_file():
        raise ConfigError(f"suite.data_files.{task}={str(path)!r} does not exist; give a local jsonl, json, parquet or csv file")
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"suite.data_files.{task}: {path.suffix or 'no suffix'} is not supported; use .jsonl, .json, .parquet or .csv")
    if path.stat().st_size == 0:
        raise ConfigError(f"suite.data_files.{task}={path.name} is empty; give it rows in the {dataset_path} schema")
    table = read_table(path)
    if table.empty:
        raise ConfigError(f"suite.data_files.{task}={path.name} is empty (no rows); give it rows in the {dataset_path} schema")
    required = HUB_SCHEMAS.get(dataset_path, [])
    missing = [name for name in required if name not in table.columns]
    if missing:
        raise ConfigError(f"suite.data_files.{task}={path.name} lacks the field(s) {', '.join(missing)} of the "
                          f"{dataset_path} schema ({', '.join(required)}); see README, 'Air-gapped data'")
    flat = [name for name in NESTED_FIELDS.get(dataset_path, []) if isinstance(table[name].iloc[0], str)]
    if flat:
        raise ConfigError(f"suite.data_files.{task}={path.name}: field(s) {', '.join(flat)} must be lists or mappings, "
                          "not text; csv cannot hold them, use .jsonl, .json or .parquet")
    check_rows(table.to_dict("records"), dataset_path, task, path.name)
    return table


def _is_text(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _is_list(value, n: int | None = None) -> bool:
    """A list (or array, as parquet returns them) of text, of length n when given."""
    items = list(value) if hasattr(value, "__len__") and not isinstance(value, (str, dict)) else None
    return items is not None and (n is None or len(items) == n) and all(isinstance(v, str) for v in items)


def _row_problem(row: dict, dataset_path: str) -> str | None:
    """What is wrong with one row of a hub dataset's schema (types and ranges the task's templates rely on)."""
    if dataset_path == "cais/mmlu":
        if not _is_list(row["choices"], 4):
            return "choices must be a list of 4 texts"
        answer = row["answer"]
        if isinstance(answer, bool) or not isinstance(answer, (int, float)) or answer != int(answer) or not 0 <= answer <= 3:
            return f"answer={answer!r} must be an index 0-3 into choices"
        if not _is_text(row["question"]) or not _is_text(row["subject"]):
            return "question and subject must be non-empty text"
    elif dataset_path == "Rowan/hellaswag":
        if not _is_list(row["endings"], 4):
            return "endings must be a list of 4 texts"
        if str(row["label"]) not in ("0", "1", "2", "3"):
            return f"label={row['label']!r} must be \"0\"-\"3\" (the index of the right ending)"
    elif dataset_path == "allenai/ai2_arc":
        choices = row["choices"]
        if not isinstance(choices, dict) or not _is_list(choices.get("text", None)) or not _is_list(choices.get("label", None)):
            return 'choices must be {"text": [...], "label": [...]}'
        if str(row["answerKey"]) not in [str(label) for label in choices["label"]]:
            return f"answerKey={row['answerKey']!r} is not one of the choice labels {list(choices['label'])}"
    elif dataset_path == "openai/gsm8k":
        if not _is_text(row["question"]) or not isinstance(row["answer"], str) or "####" not in row["answer"]:
            return "question must be text and answer a worked solution ending '#### <number>'"
    return None


def check_rows(rows: list[dict], dataset_path: str, task: str, name: str) -> None:
    """Every row's field types and ranges; the first bad row is named (1-based, as an editor counts lines)."""
    for number, row in enumerate(rows, start=1):
        problem = _row_problem(row, dataset_path)
        if problem:
            raise ConfigError(f"suite.data_files.{task}={name}, row {number}: {problem}; fix that row "
                              "(see README, 'Air-gapped data')")


def apply_local_file(cfg: dict, path: str, task: str) -> dict | None:
    """Rewrite a task's full config to read ``path``; None when the file holds no rows for this (MMLU) subject.

    Every split the task uses becomes one split read from the file, so few-shot examples come from it too. The
    few-shot split is named as the test split because only then does lm-eval leave the asked document out of
    its own few-shot context (HellaSwag has no test split; lm-eval then compares None with None).
    """
    local = Path(path).expanduser().resolve()
    dataset_path = cfg.get("dataset_path", "")
    table = check_file(task, dataset_path, local)
    cfg = dict(cfg)
    if dataset_path == "cais/mmlu" and cfg.get("dataset_name"):
        subject = cfg["dataset_name"]
        if subject not in set(table["subject"]):
            return None
        cfg["process_docs"] = SubjectFilter(subject)
    split = cfg.get("test_split") or cfg.get("validation_split")
    for key in SPLIT_KEYS:
        if cfg.get(key):
            cfg[key] = split
    if cfg.get("test_split"):
        cfg["fewshot_split"] = split
    cfg["dataset_path"] = FORMATS[local.suffix.lower()]
    cfg["dataset_name"] = None
    cfg["dataset_kwargs"] = {"data_files": {split: str(local)}}
    return cfg
