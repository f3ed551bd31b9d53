"""Load a causal LM and its tokenizer through transformers' Auto classes, and fingerprint its weights.

Every check that can fail (missing directory, no weights, unknown hub id while offline, remote code, a GGUF
file that is missing or of an architecture transformers cannot read, a device_map that does not fit) runs on
the config alone, before the weights are read. Placement over several devices, the CPU and disk goes to
accelerate through ``from_pretrained`` (see placement.py for how the compressors work on such a model).
"""

from __future__ import annotations

import functools
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


def check_model(
    path: str, revision: str | None = None, trust_remote_code: bool = False, what: str = "model.path",
    gguf_file: str | None = None,
):
    """Cheap pre-flight: the config loads, weights exist, no remote code unless allowed. Returns the config."""
    path = resolve_path(path)
    local = Path(path).expanduser()
    if gguf_file:
        _check_gguf(path, gguf_file, what)
        return gguf_config(path, gguf_file)
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


def load_tokenizer(cfg: ModelConfig, path: str | None = None, gguf_file: str | None = None):
    """The model's tokenizer (no weights read), with a pad token: lm-eval batches need one. path/gguf_file
    default to the baseline's (model.path, model.gguf_file)."""
    if path is None:
        path, gguf_file = cfg.path, cfg.gguf_file
    path = resolve_path(path)
    kwargs = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if gguf_file:
        path, kwargs["gguf_file"] = _gguf_location(path, gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(f"the tokenizer of {path!r} could not be loaded ({str(err).splitlines()[0][:200]}); "
                          "save it beside the model with tokenizer.save_pretrained") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, path: str | None = None, tokenizer=None, gguf_file: str | None = None):
    """Load (model, tokenizer) in eval mode; safetensors preferred. Without model.device_map the model goes
    whole to model.device; with it accelerate places it (over GPUs, the CPU, disk offload) and it stays there.
    path/gguf_file: the compressed side's (default: the baseline's model.path, model.gguf_file); a GGUF file
    is dequantized to a plain float model."""
    device = pick_device(cfg.device)
    if path is None:  # the baseline
        path, gguf_file = cfg.path, cfg.gguf_file
    path = resolve_path(path)
    kwargs = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg, path, gguf_file)
    if gguf_file:
        path, kwargs["gguf_file"] = _gguf_location(path, gguf_file)
    kwargs |= placement_kwargs(cfg)
    if gguf_file:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(cfg.dtype, device), **kwargs)
        _drop_gguf_quantization(model)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(cfg.dtype, device), use_safetensors=True, **kwargs)
        except OSError:  # only pickled weights exist
            model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(cfg.dtype, device), **kwargs)
    if cfg.device_map is None:
        model.to(device)
    model.eval()
    return model, tokenizer


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs go: accelerate's main device for a dispatched model (its first parameter may be
    offloaded, i.e. on meta), else the device of its parameters."""
    hook = getattr(model, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, dtypes and bytes): the weights' identity.
    An offloaded tensor (meta, under accelerate) is read from its weights map, so placement does not change it."""
    from flipbench.compress.placement import offload_source

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if tensor.is_meta:
            weights_map, key = offload_source(model, name)
            tensor = weights_map[key].to(tensor.dtype)
        data = tensor.detach().contiguous().cpu()
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential", "cpu")


def placement_kwargs(cfg: ModelConfig) -> dict:
    """device_map / max_memory / offload_folder for from_pretrained; empty without model.device_map."""
    if cfg.device_map is None:
        return {}
    kwargs = {"device_map": _device_map(cfg.device_map)}
    if cfg.max_memory:
        kwargs["max_memory"] = {_device_key(k): v for k, v in cfg.max_memory.items()}
    if cfg.offload_folder:
        kwargs["offload_folder"] = str(Path(cfg.offload_folder).expanduser())
    return kwargs


def _device_key(key):
    """'0' (as Hydra writes a GPU index) -> 0; 'cpu', 'disk', 'cuda:1' unchanged."""
    return int(key) if isinstance(key, str) and key.isdigit() else key


def _device_map(device_map):
    if isinstance(device_map, str):
        return device_map
    return {module: _device_key(device) for module, device in dict(device_map).items()}


def _gguf_location(path: str, gguf_file: str) -> tuple[str, str]:
    """(folder or hub id, file name) for from_pretrained(..., gguf_file=): a path to an existing file stands
    on its own; otherwise the file is looked up inside path."""
    file = Path(gguf_file).expanduser()
    if file.is_file():
        return str(file.parent), file.name
    return path, gguf_file


# GGUF architecture names that transformers reads under another name (modeling_gguf_pytorch_utils)
_GGUF_RENAMED = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}


def _check_gguf(path: str, gguf_file: str, what: str) -> None:
    """The GGUF file exists and holds an architecture transformers can dequantize into a causal LM."""
    key = "compression.gguf_file" if what.startswith("compression") else "model.gguf_file"
    try:
        import gguf
    except ImportError:
        raise ConfigError(f"{key}={gguf_file!r} needs the gguf package; install it with: pip install -e '.[gguf]'") from None
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    folder, name = _gguf_location(path, gguf_file)
    file = Path(folder).expanduser() / name
    if not file.is_file():
        if Path(folder).expanduser().exists() or Path(gguf_file).is_absolute():
            raise ConfigError(f"{key}={gguf_file!r} does not exist; give a GGUF file's path (or its name inside {what})")
        return  # a file in a hub repository: from_pretrained fetches it (or says it cannot, offline)
    try:
        field = gguf.GGUFReader(file).fields["general.architecture"]
        architecture = field.contents()
    except Exception as err:  # not a GGUF file at all
        raise ConfigError(f"{key}={gguf_file!r} is not a readable GGUF file ({type(err).__name__}); give a llama.cpp GGUF file") from None
    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if _GGUF_RENAMED.get(architecture, architecture) not in supported:
        raise ConfigError(
            f"{key}={gguf_file!r} holds architecture {architecture!r}, which transformers cannot load from GGUF "
            f"(supported: {', '.join(supported)}); convert the original checkpoint instead"
        )


@functools.lru_cache(maxsize=4)
def gguf_config(path: str, gguf_file: str):
    """The transformers config of a GGUF file (parses its metadata: seconds for a tokenizer-sized vocabulary,
    so it is kept for the checks that follow)."""
    folder, name = _gguf_location(resolve_path(path), gguf_file)
    return AutoConfig.from_pretrained(folder, gguf_file=name)


def _drop_gguf_quantization(model) -> None:
    """transformers dequantizes GGUF weights on load but leaves a GGUF quantization config behind: drop it,
    so the model is a plain float model (saved, moved and compressed like any other)."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _device_problem(device) -> str | None:
    """None for a device accelerate can place on here; else what is wrong with it."""
    device = _device_key(device)
    if device in ("cpu", "disk"):
        return None
    if device == "mps":
        return None if torch.backends.mps.is_available() else "mps is not available here"
    index = device if isinstance(device, int) else 0 if device == "cuda" else None
    if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
        index = int(device[5:])
    if index is None:
        return f"{device!r} is not a device name (use cpu, disk, a GPU index like 0, or cuda:0)"
    if index >= torch.cuda.device_count():
        return f"GPU {index} does not exist here ({torch.cuda.device_count()} GPUs visible)"
    return None


def check_placement(cfg: ModelConfig, config) -> None:
    """model.device_map / max_memory / offload_folder make sense and the model fits (config: the model's
    transformers config): one line and the fix otherwise."""
    if cfg.device_map is None:
        if cfg.max_memory or cfg.offload_folder:
            raise ConfigError("model.max_memory and model.offload_folder need model.device_map; set model.device_map=auto")
        return
    device_map = _device_map(cfg.device_map)
    if isinstance(device_map, str) and device_map not in DEVICE_MAP_NAMES:
        raise ConfigError(f"model.device_map={device_map!r} is unknown; use {', '.join(DEVICE_MAP_NAMES)} or a mapping module -> device")
    placed = list(device_map.values()) if isinstance(device_map, dict) else []
    for device in placed + list(cfg.max_memory):
        problem = _device_problem(device)
        if problem:
            raise ConfigError(f"model.device_map/max_memory: {problem}; name devices that exist")
    from accelerate.utils import convert_file_size_to_int

    for device, size in cfg.max_memory.items():
        try:
            convert_file_size_to_int(size)
        except ValueError:
            raise ConfigError(f"model.max_memory.{device}={size!r} is not a size; write it like 20GiB or 500MB") from None
    if isinstance(device_map, dict):
        _check_mapping_covers(device_map, config)
        offloaded = "disk" in placed
    else:
        offloaded = device_map != "cpu" and "disk" in _planned_map(cfg, config).values()
    if offloaded and not cfg.offload_folder:
        what = "model.device_map puts weights on disk" if isinstance(device_map, dict) else (
            f"the model does not fit in model.max_memory={dict(cfg.max_memory)}" if cfg.max_memory
            else "the model does not fit in this machine's GPU and CPU memory")
        raise ConfigError(f"{what}; set model.offload_folder=<folder> for disk offload (or give it more memory)")


def meta_model(config, **kwargs):
    """The model ``config`` describes, built on the meta device: its modules and shapes, no weight read."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, **kwargs)


def _check_mapping_covers(device_map: dict, config) -> None:
    model = meta_model(config)
    modules = dict(model.named_modules())
    unknown = [name for name in device_map if name and name not in modules]
    if unknown:
        raise ConfigError(f"model.device_map names modules the model does not have: {', '.join(unknown[:3])}; "
                          "use module names such as model.layers.0 (print the model to see them)")
    def placed(name: str) -> bool:
        return any(key == "" or name == key or name.startswith(key + ".") for key in device_map)

    missing = [name for name, _ in model.named_parameters() if not placed(name)]
    if missing:
        raise ConfigError(f"model.device_map gives no device for {missing[0]} (and {len(missing) - 1} more); "
                          "map every module, e.g. add an entry for its parent")


def _planned_map(cfg: ModelConfig, config) -> dict:
    """The map from_pretrained would make for device_map auto/balanced/sequential under model.max_memory
    (transformers' own planner, run on a meta copy of the model in the dtype it will load in)."""
    from transformers.integrations.accelerate import _get_device_map

    dtype = _dtype(cfg.dtype, pick_device(cfg.device))
    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = meta_model(config, dtype=dtype)
    max_memory = {_device_key(k): v for k, v in cfg.max_memory.items()} or None
    return _get_device_map(model, cfg.device_map, max_memory, None)
