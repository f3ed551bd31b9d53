"""A side's artifact: one model's evaluation (or one shard of it), self-describing, for ``flipbench compare``.

Folder layout (written by :func:`flipbench.collect.collect`):

- ``samples.parquet``: the side's per-sample frame (:data:`flipbench.schema.SIDE_COLUMNS`), lm-eval's own scoring;
- ``side.kl.pt`` + ``side.kl.json`` (baseline, generative tasks): the token-KL reference, the baseline's top-k
  answer-token log-probs (the baseline cache's layout);
- ``tokenkl.parquet`` (compressed, collected with ``output.baseline_artifact``): token-KL statistics of this side
  against that baseline's answers, per generative row;
- a baseline cache entry (``results/cache/<key>/``) has this layout too, so it can be compared directly;
- ``order.json`` (collected with ``gate.sequential=true``): the seed and each task's doc order; the folder then
  holds the first ``gate.sequential_docs`` docs of that order (docs/sequential.md);
- ``artifact.json``: everything pairing checks (task configs, tokenizer, doc sets, suite settings, lm-eval version),
  the model's identity and fingerprint, the engine, versions, compression details, the shard, the resolved config;
  ``"status": "complete"`` is written last.

:func:`load_side` reads one side from a list of folders (an artifact, or a folder of shard artifacts), checks that
the shards tile the side (same N, each index once, same identity) and merges them in the one-process row order.
:func:`check_compatible` refuses two sides that cannot be compared, naming the difference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from flipbench.config import ConfigError

FORMAT = 1
MANIFEST = "artifact.json"
SAMPLES = "samples.parquet"
TOKEN_KL = "tokenkl.parquet"
REFERENCE_KEY = "side"  # <folder>/side.kl.pt (cache.REFERENCE_NAME)
ORDER = "order.json"  # collected with gate.sequential: every task's doc order, which compare's looks follow

# Manifest fields that every shard of one side must share (the side's identity).
SIDE_IDENTITY = ("side", "model", "engine", "tasks", "tokenizer", "suite", "lm_eval", "compression_settings")
# Fields both sides must share to be compared.
PAIRED = {"tasks": "task configs", "tokenizer": "tokenizers", "lm_eval": "lm-eval versions"}
SUITE_PAIRED = ("tasks", "limit", "task_limits", "num_fewshot", "seed", "metrics", "correct_if", "subject_field",
                "max_gen_toks")


def shard_folder(root: Path, shard: tuple[int, int] | None) -> Path:
    return Path(root) if shard is None else Path(root) / f"shard-{shard[0]}-of-{shard[1]}"


def is_artifact(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def is_complete(folder: Path) -> bool:
    return read_manifest(folder).get("status") == "complete"


@dataclass
class Side:
    """One side, its shards merged."""

    folders: list[Path]
    manifest: dict  # the first shard's, with docs/docs_total summed over shards
    samples: pd.DataFrame
    token_kl: pd.DataFrame | None  # per generative row (compressed side with a baseline artifact)
    references: dict | None  # {row key: tokenkl.Reference} (baseline), merged over shards
    order: dict | None = None  # order.json (a sequential collect), the same in every shard

    @property
    def label(self) -> str:
        return ", ".join(str(f) for f in self.folders)


def expand(paths: list[str | Path]) -> list[Path]:
    """Artifacts from the given folders: an artifact folder stands for itself, a folder of shard artifacts for its
    shards. A path that is neither is a ConfigError naming it."""
    out = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError(f"{path} does not exist; give an artifact folder written by `flipbench collect`")
        if is_artifact(path):
            out.append(path)
            continue
        children = sorted(p for p in path.iterdir() if p.is_dir() and is_artifact(p)) if path.is_dir() else []
        if not children:
            raise ConfigError(f"{path} is not a flipbench artifact (no {MANIFEST}) and holds none; give a folder "
                              "written by `flipbench collect`")
        out.extend(children)
    return out


def _identity(manifest: dict) -> dict:
    return {key: manifest.get(key) for key in SIDE_IDENTITY}


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if va != vb:
            if isinstance(va, dict) and isinstance(vb, dict):
                return _first_difference(va, vb, f"{prefix}{key}.")
            return f"{prefix}{key} ({va!r} vs {vb!r})"
    return ""


def check_shards(folders: list[Path], manifests: list[dict], what: str) -> None:
    """The shards of one side tile it: one shard count, every index 0..N-1 exactly once, one identity."""
    for folder, manifest in zip(folders, manifests):
        if manifest.get("format") != FORMAT:
            raise ConfigError(f"{folder} was written by another flipbench artifact format ({manifest.get('format')}); "
                              "collect it again with this version")
        if manifest.get("status") != "complete":
            raise ConfigError(f"{folder} is not complete (status {manifest.get('status', 'missing')}); "
                              "run its `flipbench collect` again")
    shards = [tuple(m["shard"]) if m.get("shard") else None for m in manifests]
    if len(folders) == 1 and shards[0] is None:
        return
    if None in shards:
        raise ConfigError(f"{what}: {folders[shards.index(None)]} is a whole side, mixed with shards; give one or the other")
    counts = {n for _, n in shards}
    if len(counts) > 1:
        raise ConfigError(f"{what}: shards of different counts ({', '.join(sorted(f'/{n}' for n in counts))}); "
                          "give the shards of one collect")
    count = counts.pop()
    seen: dict[int, Path] = {}
    for folder, (index, _) in zip(folders, shards):
        if index in seen:
            raise ConfigError(f"{what}: shard {index}/{count} is given twice ({seen[index]} and {folder}); keep one")
        seen[index] = folder
    missing = [i for i in range(count) if i not in seen]
    if missing:
        raise ConfigError(f"{what}: shard {missing[0]}/{count} is missing ({len(missing)} of {count} missing); run "
                          f"`flipbench collect ... shard={missing[0]}/{count}` and give its folder")
    first = _identity(manifests[0])
    for folder, manifest in zip(folders[1:], manifests[1:]):
        difference = _first_difference(first, _identity(manifest))
        if difference:
            raise ConfigError(f"{what}: {folder} is not a shard of the same collect as {folders[0]}: {difference} "
                              "differs; collect every shard with the same settings")


def order_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The one-process order: by task, group and doc, each doc's filter rows in their own (task YAML) order."""
    return frame.sort_values(["task", "group", "doc_id"], kind="stable").reset_index(drop=True)


def load_side(paths: list[str | Path], what: str) -> Side:
    """One side from artifact folders (or folders of shards); shards checked and merged. lm-eval sample logs and
    per-item prediction files are read by :mod:`flipbench.foreign`."""
    from flipbench import foreign  # lm-eval logs and per-item files

    side = foreign.load_foreign(paths, what)
    if side is not None:
        return side
    folders = expand(paths)
    manifests = [read_manifest(f) for f in folders]
    check_shards(folders, manifests, what)
    order = sorted(range(len(folders)), key=lambda k: (manifests[k].get("shard") or [0])[0])
    folders, manifests = [folders[k] for k in order], [manifests[k] for k in order]
    frames = [pd.read_parquet(f / SAMPLES) for f in folders]
    samples = order_rows(pd.concat(frames, ignore_index=True)) if len(frames) > 1 else frames[0]
    kl_frames = [pd.read_parquet(f / TOKEN_KL) for f in folders if (f / TOKEN_KL).is_file()]
    token_kl = pd.concat(kl_frames, ignore_index=True) if kl_frames and len(kl_frames) == len(folders) else None
    references = load_references(folders, manifests[0])
    manifest = dict(manifests[0])
    docs: dict[str, int] = {}
    for m in manifests:
        for leaf, n in (m.get("docs") or {}).items():
            docs[leaf] = docs.get(leaf, 0) + n
    manifest["docs"] = docs
    manifest["shards"] = [m.get("shard") for m in manifests]
    orders = [read_order(f) for f in folders]
    if any(o != orders[0] for o in orders[1:]):
        raise ConfigError(f"{what}: the shards were collected with different gate.sequential orders; collect every "
                          "shard with the same eval.seed, gate.stratify and gate.sequential_docs")
    return Side(folders, manifest, samples, token_kl, references, orders[0])


def write_order(folder: Path, order: dict) -> None:
    (Path(folder) / ORDER).write_text(json.dumps(order))


def read_order(folder: Path) -> dict | None:
    path = Path(folder) / ORDER
    return json.loads(path.read_text()) if path.is_file() else None


def load_references(folders: list[Path], manifest: dict) -> dict | None:
    """The token-KL references of every shard, merged; None where a shard has none."""
    from flipbench.cache import ArtifactFolder

    topk = (manifest.get("eval") or {}).get("token_kl_topk", 0)
    merged: dict = {}
    for folder in folders:
        if not (folder / f"{REFERENCE_KEY}.kl.json").is_file():
            return None
        part = ArtifactFolder(folder).load_reference(REFERENCE_KEY, topk=topk)
        if part is None:
            return None
        merged.update(part)
    return merged


def check_compatible(base: Side, comp: Side, same_docs: bool = True) -> None:
    """Refuse (ConfigError, one line) two sides evaluated on different task configs, tokenizers, doc sets or suite
    settings: their answers would differ for reasons other than the compression. ``same_docs=False`` (a sequential
    compare): the doc sets may differ, the decision uses the prefix both hold."""
    from flipbench import foreign

    foreign.check_compatible(base, comp)
    for key, name in PAIRED.items():
        a, b = base.manifest.get(key), comp.manifest.get(key)
        if a != b:
            detail = _first_difference(a, b) if isinstance(a, dict) and isinstance(b, dict) else f"{a!r} vs {b!r}"
            raise ConfigError(f"the two sides were evaluated with different {name} ({detail}); collect both with "
                              "the same suite, tokenizer and lm-eval")
    suite_a, suite_b = base.manifest.get("suite") or {}, comp.manifest.get("suite") or {}
    for key in SUITE_PAIRED:
        if suite_a.get(key) != suite_b.get(key):
            raise ConfigError(f"the two sides were evaluated with different suite.{key} ({suite_a.get(key)!r} vs "
                              f"{suite_b.get(key)!r}); collect both with the same suite settings")
    docs_a, docs_b = base.manifest.get("docs") or {}, comp.manifest.get("docs") or {}
    if same_docs and docs_a != docs_b:
        raise ConfigError(f"the two sides evaluated different doc sets ({_first_difference(docs_a, docs_b)} docs); "
                          "collect both with the same limits (and every shard of each)")
