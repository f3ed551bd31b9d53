"""Baseline cache: per-sample baseline results keyed by everything that could change them.

lm-eval's own ``use_cache`` keys requests without the model, so it cannot tell two models apart; this key
includes the weights' fingerprint. Each entry is a folder ``<root>/<key>/`` laid out as a side's artifact
(:mod:`flipbench.artifact`: ``samples.parquet``, ``artifact.json``, the token-KL reference ``side.kl.pt``), so
``flipbench compare results/cache/<key> <compressed artifact>`` reads it as it reads a collected baseline. Files
are written to a temp file and renamed, ``artifact.json`` (holding the parquet's sha256) last, so a torn or
corrupt entry is detected and recomputed, and two writers cannot interleave their bytes.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)


# Bump when the per-sample frame's layout or order changes, so entries written by older code are not reused.
FORMAT = 4
# Bump when the token-KL reference's layout changes (2: tokenkl.Reference tuples, full or top-k).
REFERENCE_LAYOUT = 2


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def stable_repr(value) -> str:
    """Functions (process_docs, custom metrics) by qualified name: their default repr holds a memory address."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return repr(value)


def data_files_digest(config: dict) -> str:
    """Local data files by content: a file edited in place must not reuse a baseline computed from its old rows."""
    files = (config.get("dataset_kwargs") or {}).get("data_files") or {}
    files = files if isinstance(files, dict) else {"": files}
    digest = hashlib.sha256()
    for split in sorted(files):
        for path in [files[split]] if isinstance(files[split], str) else files[split]:
            # A save_to_disk folder counts by every file in it (arrow shards, state).
            members = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
            for member in members:
                if member.is_file():
                    digest.update(split.encode() + member.read_bytes())
    return digest.hexdigest()[:16]


def task_fingerprint(tasks: dict) -> dict[str, str]:
    """Hash of each lm-eval task's full config (prompts, splits, data files, filters, metrics) and local data."""
    out = {}
    for name, task in sorted(tasks.items()):
        config = task.dump_config()
        dumped = json.dumps(config, sort_keys=True, default=stable_repr) + data_files_digest(config)
        out[name] = hashlib.sha256(dumped.encode()).hexdigest()[:16]
    return out


ENTRY_SAMPLES, ENTRY_MANIFEST, REFERENCE_NAME = "samples.parquet", "artifact.json", "side"


class BaselineCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        """The folder of one entry (an artifact folder)."""
        return self.root / key

    @contextmanager
    def lock(self, key: str):
        """An exclusive advisory lock per entry, held while one process computes it; the lock file is removed
        when released. A waiter that wakes holding a file already removed (or replaced) locks the current one
        instead, so that two processes never both believe they hold the lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{key}.lock"
        while True:
            handle = open(path, "a")
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            handle.close()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still holding it: a new opener then creates a fresh file
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def changed_libraries(self, model: str, weights: str, parts: dict) -> list[str]:
        """What differs (torch, transformers, lm-eval, engine, tokenizer) between ``parts`` and the cached entries of
        the same model and weights: the reason a baseline is evaluated again after an upgrade."""
        watched = ("lm_eval", "torch", "transformers", "engine", "tokenizer")
        changed: set[str] = set()
        found_same = False
        for meta_path in self.root.glob(f"*/{ENTRY_MANIFEST}") if self.root.is_dir() else []:
            try:
                key = json.loads(meta_path.read_text()).get("key") or {}
            except (OSError, ValueError):
                continue
            if key.get("format") != parts.get("format") or key.get("model") != model or key.get("weights") != weights:
                continue
            diff = [name for name in watched if key.get(name) != parts.get(name)]
            if not diff:
                found_same = True
            changed.update(diff)
        return [] if found_same else sorted(changed)

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.entry(key) / ENTRY_SAMPLES, self.entry(key) / ENTRY_MANIFEST

    def load(self, key: str) -> pd.DataFrame | None:
        data_path, meta_path = self._paths(key)
        if not data_path.exists() and not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            blob = data_path.read_bytes()
            if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
                raise ValueError("checksum mismatch")
            frame = pd.read_parquet(io.BytesIO(blob))
            if len(frame) != meta["rows"]:
                raise ValueError("row count mismatch")
            return frame
        except (OSError, ValueError, KeyError) as err:
            log.warning("baseline cache entry %s is corrupt or partial (%s); recomputing it", key, err)
            return None

    def store(self, key: str, frame: pd.DataFrame, parts: dict, fields: dict | None = None) -> None:
        """Write the entry: ``parts`` is its key's content, ``fields`` the artifact manifest's (side identity, docs,
        config; :func:`flipbench.collect.artifact_fields`)."""
        self.entry(key).mkdir(parents=True, exist_ok=True)
        self.drop_reference(key)  # computed from the samples being replaced
        data_path, meta_path = self._paths(key)
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        blob = buffer.getvalue()
        suffix = f".tmp{os.getpid()}"
        data_tmp, meta_tmp = data_path.with_suffix(suffix + ".parquet"), meta_path.with_suffix(suffix + ".json")
        data_tmp.write_bytes(blob)
        from flipbench.artifact import FORMAT as ARTIFACT_FORMAT

        meta = {**(fields or {}), "format": ARTIFACT_FORMAT, "sha256": hashlib.sha256(blob).hexdigest(),
                "rows": len(frame), "key": parts, "status": "complete"}
        meta_tmp.write_text(json.dumps(meta, default=str, indent=1))
        # Data first, then its sidecar: a reader that sees the new sidecar also sees the matching data.
        os.replace(data_tmp, data_path)
        os.replace(meta_tmp, meta_path)

    # The baseline's answer-token distributions for token KL (flipbench.tokenkl.Reference: full or top-k), beside
    # its samples: a cached run then needs only the compressed model's forward pass. Rows are keyed by (task,
    # group, doc_id, digest of prompt and answer), so a reference written for other generations never matches.
    # One tuple of tensors per row, written by torch.save straight from each tensor's storage and read back
    # memory-mapped; a sidecar holds the file's sha256, the layout version and the eval.token_kl_topk it was
    # built with (a reference for another k, or written in an older layout, is recomputed, never misread).

    def _reference_paths(self, key: str) -> tuple[Path, Path]:
        return self.entry(key) / f"{REFERENCE_NAME}.kl.pt", self.entry(key) / f"{REFERENCE_NAME}.kl.json"

    def drop_reference(self, key: str) -> None:
        for path in self._reference_paths(key):
            path.unlink(missing_ok=True)

    def load_reference(self, key: str, max_bytes: int | None = None, topk: int = 0) -> dict | None:
        """The stored {row key: tokenkl.Reference}, or None when absent, built for another ``topk`` or in another
        layout, larger than ``max_bytes``, torn or corrupt."""
        import torch

        from flipbench.tokenkl import Reference

        data_path, meta_path = self._reference_paths(key)
        if not data_path.exists() and not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("layout") != REFERENCE_LAYOUT or meta.get("topk") != topk:
                log.info("token-KL reference %s was built for top-k %s (layout %s); recomputing it for top-k %d",
                         key, meta.get("topk"), meta.get("layout"), topk)
                return None
            if max_bytes is not None and data_path.stat().st_size > max_bytes:
                return None
            if _file_sha256(data_path) != meta["sha256"]:
                raise ValueError("checksum mismatch")
            rows = torch.load(data_path, mmap=True, weights_only=True)
            if len(rows) != len(meta["rows"]) or any(len(row) != len(Reference._fields) for row in rows):
                raise ValueError("row count mismatch")
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
            log.warning("token-KL reference %s is corrupt or partial (%s); recomputing it", key, err)
            return None
        return {tuple(row_key): Reference(*row) for row_key, row in zip(meta["rows"], rows)}

    def store_reference(self, key: str, reference: dict, topk: int = 0) -> None:
        """Store {row key: tokenkl.Reference} built with eval.token_kl_topk = ``topk``."""
        import torch

        self.entry(key).mkdir(parents=True, exist_ok=True)
        data_path, meta_path = self._reference_paths(key)
        suffix = f".tmp{os.getpid()}"
        data_tmp, meta_tmp = data_path.with_suffix(suffix + ".pt"), meta_path.with_suffix(suffix + ".json")
        torch.save([tuple(t.contiguous() if t is not None else None for t in row) for row in reference.values()],
                   data_tmp)
        meta_tmp.write_text(json.dumps({"sha256": _file_sha256(data_tmp), "layout": REFERENCE_LAYOUT, "topk": topk,
                                        "rows": [list(r) for r in reference]}))
        os.replace(data_tmp, data_path)
        os.replace(meta_tmp, meta_path)


class ArtifactFolder(BaselineCache):
    """One artifact folder read and written with the cache's checked formats (the key is ignored)."""

    def entry(self, key: str) -> Path:
        return self.root


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
