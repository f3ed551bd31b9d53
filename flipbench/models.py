"""Load a causal LM and its tokenizer through transformers' Auto classes, and fingerprint its weights.

Every check that can fail (missing directory, no weights, unknown hub id while offline, remote code) runs
on the config alone, before the weights are read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from flipbench.config import ConfigError, ModelConfig
from flipbench.preflight import check_config_json, check_weight_files

BUNDLED_DIR = Path(__file__).parent / "assets"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def resolve_path(path: str) -> str:
    """``bundled:NAME`` → the packaged model directory; anything else is returned unchanged."""
    if path.startswith("bundled:"):
        local = BUNDLED_DIR / path.split(":", 1)[1]
        if not (local / "config.json").exists():
            raise ConfigError(f"bundled model {path!r} is missing; build it with: make tiny-model")
        return str(local)
    return path


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _dtype(name: str, device: torch.device) -> torch.dtype | str:
    if name == "auto":
        # Half precision on CPU is slow and lossy in matmuls; keep fp32 there.
        return "auto" if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def load_dtype(name: str, device: torch.device, config) -> torch.dtype:
    """The dtype load_model's weights end up in: the configured one, or under auto the checkpoint's own
    (fp32 on CPU)."""
    chosen = _dtype(name, device)
    if chosen != "auto":
        return chosen
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return getattr(torch, saved) if isinstance(saved, str) else saved or torch.float32


def check_model(path: str, revision: str | None = None, trust_remote_code: bool = False, what: str = "model.path"):
    """Cheap pre-flight: the config loads, weights exist, no remote code unless allowed. Returns the config."""
    path = resolve_path(path)
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise ConfigError(f"{what}={path!r} has no config.json; point it at a Hugging Face model directory")
        if not any(next(local.glob(p), None) for p in WEIGHT_PATTERNS):
            raise ConfigError(f"{what}={path!r} holds no weights (*.safetensors or *.bin); save the model with save_pretrained")
        check_config_json(local, f"{what}={path!r}")
    elif path.startswith((".", "/", "~")) or os.sep in path and path.count("/") > 1:
        raise ConfigError(f"{what}={path!r} does not exist; give an existing directory or a hub id like org/name")
    try:
        config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ConfigError(f"{what}={path!r} needs custom code; review it, then set model.trust_remote_code=true") from None
        raise ConfigError(f"{what}={path!r} could not be read: {str(err).splitlines()[0]}") from None
    except OSError:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
        hint = "download it first or unset HF_HUB_OFFLINE" if offline else "check the hub id or give a local directory"
        raise ConfigError(f"{what}={path!r} is neither a local model directory nor a reachable hub model; {hint}") from None
    if getattr(config, "auto_map", None) and not trust_remote_code and "AutoModelForCausalLM" in config.auto_map:
        raise ConfigError(f"{what}={path!r} needs custom code; review it, then set model.trust_remote_code=true")
    if local.is_dir():
        check_weight_files(local, f"{what}={path!r}")
    return config


def load_tokenizer(cfg: ModelConfig, path: str | None = None):
    """The model's tokenizer (no weights read), with a pad token: lm-eval batches need one."""
    path = resolve_path(path or cfg.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"the tokenizer of {path!r} could not be loaded ({str(err).splitlines()[0][:200]}); "
                          "save it beside the model with tokenizer.save_pretrained") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, path: str | None = None, tokenizer=None):
    """Load (model, tokenizer) in eval mode on the configured device; safetensors preferred."""
    device = pick_device(cfg.device)
    path = resolve_path(path or cfg.path)
    kwargs = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg, path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(cfg.dtype, device), use_safetensors=True, **kwargs)
    except OSError:  # only pickled weights exist
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(cfg.dtype, device), **kwargs)
    model.to(device).eval()
    return model, tokenizer


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, dtypes and bytes): the weights' identity."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        data = tensor.detach().contiguous().cpu()
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
