"""Air-gapped evaluation: run an lm-eval task's own processing over local data in its hub dataset's schema.

``suite.data_files.<task>`` swaps only where the rows come from; prompts, filters, metrics and the roles of
the splits (MMLU few-shot from ``dev``, GSM8k from ``train``) stay lm-eval's. It takes

- one source (a file, or a ``Dataset.save_to_disk`` folder): every split the task uses reads it;
- a mapping ``{split: source}``;
- a folder laid out as the hub dataset: one source per split named after it (``test.jsonl``,
  ``test-00000-of-00001.parquet``, a ``test/`` save_to_disk folder, or a ``DatasetDict.save_to_disk`` output),
  optionally under a sub-folder named after the task's config (``<folder>/ARC-Challenge/test``, MMLU's
  ``<folder>/anatomy/dev``).

Every source is checked (splits the task needs, fields it reads, rows, shots) before any model loads.
"""

from __future__ import annotations

import functools
import json
import re
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
    "allenai/winogrande": ["sentence", "option1", "option2", "answer"],
}
# Fields that hold a list or a mapping: csv cannot carry them, and a stringified one must not reach a template.
NESTED_FIELDS = {"cais/mmlu": ["choices"], "Rowan/hellaswag": ["endings"], "allenai/ai2_arc": ["choices"]}
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_]+?)(-\d{5}-of-\d{5})?$")  # test, test-00000-of-00001


class SubjectFilter:
    """process_docs for one MMLU subject from a source holding them all (a stable repr keeps cache keys stable)."""

    def __init__(self, subject: str):
        self.subject = subject

    def __call__(self, dataset):
        return dataset.filter(lambda doc: doc["subject"] == self.subject)

    def __repr__(self) -> str:
        return f"SubjectFilter({self.subject!r})"


class LocalSplits:
    """lm-eval ``custom_dataset``: a DatasetDict from ``data_files={split: source}``, each source in its own format.

    lm-eval calls it with the task's ``dataset_kwargs`` (and metadata), so the sources stay in
    ``dataset_kwargs.data_files`` where the baseline cache's content digest finds them.
    """

    def __call__(self, data_files: dict[str, str] | None = None, **_metadata):
        import datasets

        return datasets.DatasetDict({split: load_source(Path(path)) for split, path in (data_files or {}).items()})

    def __repr__(self) -> str:
        return "LocalSplits()"


def is_saved_dataset(path: Path) -> bool:
    """A ``Dataset.save_to_disk`` folder (arrow shards + state.json)."""
    return path.is_dir() and (path / "state.json").is_file()


def load_source(path: Path):
    import datasets

    if is_saved_dataset(path):
        return datasets.load_from_disk(str(path))
    return datasets.load_dataset(FORMATS[path.suffix.lower()], data_files=str(path), split="train")


@functools.lru_cache(maxsize=256)
def _read(path: str, stamp: tuple) -> pd.DataFrame:
    """A source as a frame, cached per (path, mtime, size): MMLU's 57 subjects read one all-subject file once."""
    local = Path(path)
    if is_saved_dataset(local):
        import datasets

        return datasets.load_from_disk(path).to_pandas()
    fmt = FORMATS.get(local.suffix.lower())
    if fmt == "json":
        return pd.read_json(local, lines=local.suffix.lower() == ".jsonl")
    if fmt == "parquet":
        return pd.read_parquet(local)
    return pd.read_csv(local)


def read_table(path: Path) -> pd.DataFrame:
    stat = path.stat()
    try:
        return _read(str(path), (stat.st_mtime_ns, stat.st_size))
    except (ValueError, OSError) as err:
        fmt = "a saved dataset" if path.is_dir() else FORMATS.get(path.suffix.lower())
        raise ConfigError(f"data file {path} could not be read as {fmt} ({str(err).splitlines()[0]}); "
                          "check the file's format") from None


def check_file(task: str, dataset_path: str, path: Path, label: str = "") -> pd.DataFrame:
    """The source exists, has a known format and carries the fields the task reads."""
    key = f"suite.data_files.{task}{label}"
    if not path.exists():
        raise ConfigError(f"{key}={str(path)!r} does not exist; give a local jsonl, json, parquet or csv file "
                          "(or a save_to_disk folder)")
    if path.is_dir() and not is_saved_dataset(path):
        raise ConfigError(f"{key}={path.name} is a folder but not a Dataset.save_to_disk output (no state.json); "
                          "give a file or a saved dataset")
    if path.is_file() and path.suffix.lower() not in FORMATS:
        raise ConfigError(f"{key}: {path.suffix or 'no suffix'} is not supported; use .jsonl, .json, .parquet or .csv")
    if path.is_file() and path.stat().st_size == 0:
        raise ConfigError(f"{key}={path.name} is empty; give it rows in the {dataset_path} schema")
    table = read_table(path)
    if table.empty:
        raise ConfigError(f"{key}={path.name} is empty (no rows); give it rows in the {dataset_path} schema")
    required = HUB_SCHEMAS.get(dataset_path, [])
    missing = [name for name in required if name not in table.columns]
    if missing:
        raise ConfigError(f"{key}={path.name} lacks the field(s) {', '.join(missing)} of the "
                          f"{dataset_path} schema ({', '.join(required)}); see docs/data.md, 'Air-gapped'")
    flat = [name for name in NESTED_FIELDS.get(dataset_path, []) if isinstance(table[name].iloc[0], str)]
    if flat:
        raise ConfigError(f"{key}={path.name}: field(s) {', '.join(flat)} must be lists or mappings, "
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
                              "(see docs/data.md, 'Air-gapped')")


def used_splits(cfg: dict) -> list[str]:
    """The split names the task's config reads, in SPLIT_KEYS order, without repeats."""
    return list(dict.fromkeys(cfg[key] for key in SPLIT_KEYS if cfg.get(key)))


def needed_splits(cfg: dict, shots: int) -> dict[str, str]:
    """{split: role} the task cannot run without: the evaluated split, and the few-shot split when shots > 0
    (lm-eval's order: fewshot_split, else train, else validation)."""
    need = {cfg.get("test_split") or cfg.get("validation_split"): "the evaluated split"}
    shots_from = fewshot_split(cfg, shots)
    if shots_from:
        need.setdefault(shots_from, f"the few-shot examples ({shots}-shot)")
    return need


def folder_sources(folder: Path, config_name: str | None) -> tuple[dict[str, Path], bool]:
    """({split: source}, descended) from a hub-layout folder; descended: a sub-folder named after the config."""
    descended = bool(config_name) and (folder / str(config_name)).is_dir()
    if descended:
        folder = folder / str(config_name)
    if (folder / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        return {split: folder / split for split in splits}, descended
    sources: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        match = SHARD.match(entry.stem if entry.is_file() else entry.name)
        if match and ((entry.is_file() and entry.suffix.lower() in FORMATS) or is_saved_dataset(entry)):
            sources.setdefault(match["split"], entry)
    return sources, descended


def _one_source(cfg: dict, path: Path) -> dict[str, Path]:
    """Every split reads ``path``. The few-shot split is named as the test split because only then does lm-eval
    leave the asked document out of its own few-shot context (HellaSwag has no test split)."""
    split = cfg.get("test_split") or cfg.get("validation_split")
    for key in SPLIT_KEYS:
        if cfg.get(key):
            cfg[key] = split
    if cfg.get("test_split"):
        cfg["fewshot_split"] = split
    return {split: path}


def _sources(task: str, cfg: dict, spec) -> tuple[dict[str, Path], bool, str | None]:
    """(sources, descended into a config folder, note on a deviation from the standard protocol)."""
    if isinstance(spec, dict):
        unused = [split for split in spec if split not in used_splits(cfg)]
        if unused:
            raise ConfigError(f"suite.data_files.{task} names split {unused[0]!r}, which {task} does not use; "
                              f"give its splits {', '.join(used_splits(cfg))}")
        return {split: Path(str(p)).expanduser().resolve() for split, p in spec.items()}, False, None
    path = Path(str(spec)).expanduser().resolve()
    if path.is_dir() and not is_saved_dataset(path):
        sources, descended = folder_sources(path, cfg.get("dataset_name"))
        if not sources and cfg.get("dataset_path") == "cais/mmlu" and any(p.is_dir() for p in path.iterdir()):
            return {}, True, None  # per-subject folders without this subject: nothing to evaluate for it
        if not sources:
            where = f" nor a {cfg['dataset_name']}/ sub-folder" if cfg.get("dataset_name") else ""
            raise ConfigError(f"suite.data_files.{task}={path} holds no split files (e.g. test.jsonl) or saved "
                              f"splits{where}; lay it out as the hub dataset, one source per split "
                              f"{', '.join(used_splits(cfg))}")
        return sources, descended, None
    roles = used_splits(cfg)
    sources = _one_source(cfg, path)
    note = None
    if len(roles) > 1:
        note = (f"{task}: one file serves every split ({', '.join(roles)}), so few-shot and calibration examples come "
                "from the evaluated rows, not the standard protocol's splits; give suite.data_files."
                f"{task}={{{roles[0]}: FILE, ...}} or a hub-layout folder to follow it")
    return sources, False, note


def fewshot_split(cfg: dict, shots: int) -> str | None:
    """The split lm-eval draws the few-shot examples from (its order: fewshot_split, else train, else
    validation, else the evaluated split); None without shots or with fixed few-shot samples in the YAML."""
    if shots <= 0 or (cfg.get("fewshot_config") or {}).get("samples"):
        return None
    evaluated = cfg.get("test_split") or cfg.get("validation_split")
    return cfg.get("fewshot_split") or cfg.get("training_split") or cfg.get("validation_split") or evaluated


def _check_rows(task: str, table: pd.DataFrame, split: str, shots: int, evaluated: bool, subject: str | None) -> None:
    """Enough rows for the few-shot draw: ``shots``, one more when the few-shot split is the test split (lm-eval
    then draws shots + 1 and drops the asked doc; with fewer it fails with 'Sample larger than population')."""
    if len(table) < (shots + 1 if evaluated else shots):
        plus = " plus the asked doc (lm-eval leaves it out of its own context)" if evaluated else ""
        raise ConfigError(f"suite.data_files.{task}: split {split!r} has {len(table)} row{'s' if len(table) != 1 else ''}"
                          f"{f' for {subject}' if subject else ''}, fewer than the {shots} shots{plus}; "
                          f"give the full {split} split or lower suite.num_fewshot.{task}")


def apply_local_data(cfg: dict, spec, task: str, shots: int) -> tuple[dict | None, str | None]:
    """Rewrite a task's full config to read local data. Returns (config, note); config None when the data hold no
    rows for this (MMLU) subject; note names a deviation from the standard protocol (the one-source form)."""
    cfg = dict(cfg)
    dataset_path = cfg.get("dataset_path", "")
    single = not isinstance(spec, dict) and not (Path(str(spec)).expanduser().is_dir()
                                                 and not is_saved_dataset(Path(str(spec)).expanduser()))
    sources, descended, note = _sources(task, cfg, spec)
    if not sources:
        return None, note
    need = needed_splits(cfg, shots)
    missing = [split for split in need if split not in sources]
    if missing:
        raise ConfigError(f"suite.data_files.{task} has no {missing[0]!r} split ({need[missing[0]]} of {task}); "
                          f"add it, e.g. suite.data_files.{task}={{{missing[0]}: FILE, ...}}")
    used = [split for split in [*need, *used_splits(cfg)] if split in sources]
    sources = {split: sources[split] for split in dict.fromkeys(used)}  # the evaluated split first
    subject = cfg.get("dataset_name") if dataset_path == "cais/mmlu" and not descended else None
    evaluated, shots_from = next(iter(need)), fewshot_split(cfg, shots)
    for split, path in sources.items():
        table = check_file(task, dataset_path, path, "" if single else f".{split}")
        if subject:
            table = table[table["subject"] == subject]
            if split == evaluated and table.empty:
                return None, note
        if split == shots_from:
            _check_rows(task, table, split, shots, split == cfg.get("test_split"), subject)
    if subject:
        cfg["process_docs"] = SubjectFilter(subject)
    for key in SPLIT_KEYS:
        if cfg.get(key) and cfg[key] not in sources:
            cfg[key] = None  # an optional split the user does not hold (e.g. ARC's train): lm-eval skips it
    cfg["dataset_path"] = "local"
    cfg["dataset_name"] = None
    cfg["dataset_kwargs"] = {"data_files": {split: str(path) for split, path in sources.items()}}
    cfg["custom_dataset"] = LocalSplits()
    return cfg, note
