"""Engines: what runs a side's model for lm-eval. Scoring is lm-eval's own on every engine.

- ``hf``: lm-eval's HFLM around the model object flipbench loaded (and compressed) in this process.
- ``vllm`` (:mod:`flipbench.engines.vllm`): lm-eval's vLLM model on a folder (model.path for the baseline; a
  compressed side made in this process is saved first, :func:`save_served`).
- ``server`` (:mod:`flipbench.engines.server`): lm-eval's OpenAI-compatible completions model against
  ``engine.base_url``, with model.path's tokenizer (requests go as token ids, so log-likelihoods are over the
  same tokens as on HF).

The pipeline calls :func:`check` in preflight (before any weight is read), :func:`build_lm` per side and
:func:`release` when a side is done (a vLLM engine holds its memory until it is shut down). Token KL on an
engine: :func:`answer_reference` on the baseline's engine, :func:`token_kl` on the compressed side's
(:mod:`flipbench.engines.logprobs`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from flipbench.config import ConfigError, FlipbenchConfig

log = logging.getLogger(__name__)

PROBE_TEXT = ("The quick brown fox jumps over the lazy dog. Question: what is 12 plus 30? Answer: 42. "
              "Paris is the capital of France, and the Nile is a river in Africa.")


def check(cfg: FlipbenchConfig) -> None:
    """Preflight: the engine is installed (else one line naming the command that installs it), it has a kernel for
    engine.serve_format, a server is reachable and serves the expected model. Raises ConfigError; reads no weight."""
    name = cfg.engine.name
    if name == "hf":
        return
    if name == "vllm":
        from flipbench.engines import vllm

        for line in vllm.problems():
            raise ConfigError(line)
        if cfg.engine.serve_format == "packed" and cfg.compression.method in ("rtn", "gptq"):
            missing = vllm.packed_kernel_missing(cfg.compression.bits)
            if missing:
                raise ConfigError(f"engine.serve_format=packed: {missing}; use engine.serve_format=dense (the same "
                                  "numbers, stored dense)")
        return
    from flipbench.engines import server

    server.check(cfg)


def needs_folder(cfg: FlipbenchConfig) -> bool:
    """True when the engine loads the model from a folder rather than taking the in-process model object."""
    return cfg.engine.name == "vllm"


def build_lm(cfg: FlipbenchConfig, *, model=None, tokenizer=None, path: str | None = None, batch_size: int,
             revision: str | None = None):
    """An lm-eval LM for one side: HFLM around ``model`` for hf; vLLM on ``path`` (a folder or hub id; ``revision``
    for the baseline's hub id); for server, the endpoint with ``tokenizer`` (model.path's). ``batch_size``: HF's
    batch; the server engine's prompts per request; vLLM takes every request of a task at once."""
    name = cfg.engine.name
    if name == "hf":
        from flipbench.evaluate import build_lm as build_hf

        return build_hf(model, tokenizer, batch_size)
    if name == "vllm":
        from flipbench.engines import vllm

        if path is None:
            raise ValueError("engine=vllm loads a folder: pass path= (model.path, or the folder save_served wrote)")
        return vllm.build(cfg, str(path), revision)
    from flipbench.engines import server

    if tokenizer is None:
        raise ValueError("engine=server needs the tokenizer (model.path's) to send token ids")
    return server.build(cfg, tokenizer, batch_size)


def release(lm) -> None:
    """Free what the side's engine holds (a vLLM engine's memory and its engine process); nothing for hf, server."""
    if type(lm).__name__ == "VLLM":
        from flipbench.engines import vllm

        vllm.release(lm)


def save_served(model, tokenizer, folder: Path, cfg: FlipbenchConfig, grids: dict | None = None) -> Path:
    """Save a compressed side made in this process where the engine can load it, and return the folder.

    engine.serve_format=dense: ``save_pretrained`` of the (fake-quantized) weights in the dtype they are in (the
    baseline's), safetensors, and the tokenizer: the same numbers the HF path evaluates. packed: the
    compressed-tensors pack-quantized export of RTN/GPTQ (``grids`` from the compressor); the model's linears are
    packed in place, so it cannot be evaluated in-process afterwards."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.engine.serve_format == "packed":
        from flipbench.compress import export
        from flipbench.pipeline import quant_config

        if not grids:
            raise ConfigError(f"engine.serve_format=packed needs the grids of compression=rtn or gptq; "
                              f"compression={cfg.compression.method} has none: use engine.serve_format=dense")
        export.save(model, tokenizer, grids, quant_config(cfg), folder)
        return folder
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def identity(cfg: FlipbenchConfig) -> dict:
    """The engine's name, settings and version: part of a side's artifact and of the baseline cache key."""
    from importlib.metadata import version

    engine = cfg.engine
    if engine.name == "hf":
        import transformers

        return {"name": "hf", "transformers": transformers.__version__}
    if engine.name == "vllm":
        from flipbench.engines import vllm

        return {"name": "vllm", "vllm": vllm.version(), "backend": "cpu" if vllm.distribution() and vllm.on_cpu() else "gpu",
                "tensor_parallel_size": engine.tensor_parallel_size, "max_model_len": engine.max_model_len,
                "enforce_eager": engine.enforce_eager, "serve_format": engine.serve_format,
                "max_logprobs": engine.max_logprobs}
    return {"name": "server", "base_url": engine.base_url, "served_model": engine.served_model,
            "max_logprobs": engine.max_logprobs, "lm_eval": version("lm_eval")}


def probe(lm, tokenizer, text: str = PROBE_TEXT) -> float:
    """Mean log-likelihood per token (nats) that ``lm`` gives ``text`` after its first word, through lm-eval's own
    request path: the same number from any engine serving the same model, up to its dtype and kernels. Compare a
    server's with the baseline model's (:func:`check_probe`) to refuse an endpoint that serves another model."""
    from lm_eval.api.instance import Instance

    head, _, rest = text.partition(" ")
    request = Instance(request_type="loglikelihood", doc={}, arguments=(head, " " + rest), idx=0)
    total = float(lm.loglikelihood([request], disable_tqdm=True)[0][0])
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) - len(tokenizer(head, add_special_tokens=False)["input_ids"])
    return total / max(n, 1)


# Per-token gap in the probe's log-likelihood that another dtype or kernel stays well below (bf16 against fp32 is
# ~0.01-0.05 nats) and another model well above; a 2-bit copy of the same model may also pass it.
PROBE_TOLERANCE = 0.25


def check_probe(served: float, baseline: float, what: str, tolerance: float = PROBE_TOLERANCE) -> None:
    """ConfigError when the endpoint's and the baseline's :func:`probe` values (nats per token) differ by more than
    ``tolerance``: the endpoint serves another model."""
    if abs(served - baseline) > tolerance:
        raise ConfigError(f"{what} serves another model: its probe log-likelihood is {served:.3f} nats/token, the "
                          f"baseline model's {baseline:.3f}; serve model.path there")


def reference_topk(cfg: FlipbenchConfig) -> int:
    """k of the baseline's token-KL reference on this engine: eval.token_kl_topk (0: the full vocabulary) on hf;
    through an engine its top-k, at most engine.max_logprobs (-1: no cap; 256 where eval.token_kl_topk is 0)."""
    k = cfg.eval.token_kl_topk
    if cfg.engine.name == "hf":
        return k
    k = k or 256
    return k if cfg.engine.max_logprobs == -1 else min(k, cfg.engine.max_logprobs)


def scoring_topk(cfg: FlipbenchConfig) -> int | None:
    """Log-probs per answer token the compressed side's engine returns for token KL: None for all of them (hf;
    engine.max_logprobs=-1: tokenkl's top-k bounds apply unchanged), else engine.max_logprobs (partial bounds)."""
    if cfg.engine.name == "hf" or cfg.engine.max_logprobs == -1:
        return None
    return cfg.engine.max_logprobs


def answer_reference(lm, tokenizer, prompts: list[str], answers: list[str], topk: int):
    """The baseline's token-KL reference from an engine's top-``topk`` log-probs (see flipbench.engines.logprobs)."""
    from flipbench.engines import logprobs

    return logprobs.answer_reference(lm, tokenizer, prompts, answers, topk)


def references(lm, tokenizer, prompts: list[str], answers: list[str], topk: int, scopes=("answer",)) -> dict:
    """The baseline's references per scope (answer, prefill) from the engine's top-``topk`` log-probs."""
    from flipbench.engines import logprobs

    return logprobs.references(lm, tokenizer, prompts, answers, topk, scopes)


def token_kl(reference, lm, tokenizer, prompts: list[str], answers: list[str], topk: int | None = None, prefill=None):
    """Token KL(base || comp) with the compressed side on an engine: tokenkl.token_kl's per-row frame (with the
    prompt's tokens scored too where ``prefill``, the baseline's prefill references, is given)."""
    from flipbench.engines import logprobs

    return logprobs.token_kl(reference, lm, tokenizer, prompts, answers, topk, prefill)
