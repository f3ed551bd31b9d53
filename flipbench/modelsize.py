"""A model's size in bytes, for the report's "GB saved": the baseline's and the compressed side's, on one basis.

Two bases, never mixed in one comparison:
- ``evaluated``: every parameter at the dtype it is evaluated in (tied weights once), the way the compressors' own
  ``model_bytes`` counts the parameters they leave as they are (quantized weights at their average bits, pruned
  linears under their storage format: flipbench/compress). On a CPU that is float32 whatever the checkpoint stores.
- ``disk``: the weight files as stored (safetensors, else PyTorch ``.bin``, or the GGUF file), which is how a
  checkpoint compressed elsewhere (``compression=checkpoint``) is measured: its in-memory copy is dequantized.
"""

from __future__ import annotations

import json
from pathlib import Path

# from_pretrained's own weight files, most specific first: an index names the shards, else the single file
_WEIGHT_FILES = (("model.safetensors.index.json", "model.safetensors"),
                 ("pytorch_model.bin.index.json", "pytorch_model.bin"))


def evaluated_bytes(model) -> int:
    """Every parameter (a tied one once) times its element size."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def disk_bytes(path: str, gguf_file: str | None = None, revision: str | None = None) -> int | None:
    """The model's weight files on this machine (a local folder, or the hub cache for a hub id); None when they
    are not here."""
    from flipbench.models import resolve_path

    if gguf_file:
        file = Path(gguf_file).expanduser()
        file = file if file.is_file() else Path(resolve_path(path)) / gguf_file
        return file.stat().st_size if file.is_file() else None
    folder = Path(resolve_path(path))
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(path, revision=revision, local_files_only=True))
        except (OSError, ValueError):  # not in the cache, or not a hub id
            return None
    for index, single in _WEIGHT_FILES:
        if (folder / index).is_file():
            shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            return sum((folder / shard).stat().st_size for shard in shards)
        if (folder / single).is_file():
            return (folder / single).stat().st_size
    return None


def baseline_size(model, model_cfg) -> dict:
    """The baseline's size for the manifest: ``bytes`` as evaluated (None without a model in this process, e.g. on
    another engine), the ``dtype`` it is evaluated in, and ``disk_bytes``."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None else None
    return {"bytes": evaluated_bytes(model) if model is not None else None, "dtype": dtype,
            "disk_bytes": disk_bytes(model_cfg.path, model_cfg.gguf_file, model_cfg.revision)}


def checkpoint_size(path: str, gguf_file: str | None, revision: str | None = None) -> dict:
    """A compressed checkpoint's size for its compression details: its weight files on disk, where they are here."""
    stored = disk_bytes(path, gguf_file, revision)
    return {} if stored is None else {"model_bytes": stored, "size_basis": "disk"}


def compared(baseline: dict | None, compression: dict) -> tuple[int, int, str] | None:
    """(baseline bytes, compressed bytes, basis) on the compressed side's basis, or None where either is unknown."""
    baseline = baseline or {}
    basis = compression.get("size_basis", "evaluated")
    base = baseline.get("disk_bytes" if basis == "disk" else "bytes")
    comp = compression.get("model_bytes")
    if not base or not comp:
        return None
    dtype = baseline.get("dtype") or "the dtype"
    where = "weight files on disk" if basis == "disk" else f"parameters at {dtype} evaluated"
    return int(base), int(comp), where
