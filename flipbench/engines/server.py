"""engine=server: lm-eval's OpenAI-compatible completions model (``local-completions``) against engine.base_url.

Requests go as token ids of model.path's tokenizer, so log-likelihoods are over the same tokens as on the HF
engine; generation is greedy with the task's stop strings, done by the server. Before any weight is read,
:func:`check` refuses an endpoint that does not answer and one that does not serve the expected model id (GET
/v1/models); :func:`flipbench.engines.probe` then compares a probe log-likelihood with the baseline's.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from importlib.util import find_spec

from flipbench.config import ConfigError

INSTALL = "pip install -e '.[server]'"
API_PACKAGES = ("aiohttp", "tenacity", "requests", "tqdm")  # what lm-eval's API models import


def root(base_url: str) -> str:
    """``http://HOST:PORT/v1`` from engine.base_url, given with or without ``/completions``."""
    url = base_url.rstrip("/")
    return url.removesuffix("/completions").rstrip("/")


def completions_url(base_url: str) -> str:
    return root(base_url) + "/completions"


def get_json(url: str, timeout_s: float, body: dict | None = None) -> dict:
    """GET (or POST ``body``) and decode; ConfigError naming the URL when it does not answer with JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:200]
        raise ConfigError(f"{url} answered HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(f"engine.base_url: {url} is unreachable ({reason}); start the server (e.g. vllm serve "
                          "MODEL) or fix engine.base_url") from None
    except json.JSONDecodeError:
        raise ConfigError(f"{url} did not answer JSON: is engine.base_url an OpenAI-compatible /v1 endpoint?") from None


def served_models(base_url: str, timeout_s: float = 10.0) -> list[str]:
    """The model ids the endpoint lists (GET /v1/models)."""
    listing = get_json(root(base_url) + "/models", timeout_s)
    return [str(m.get("id")) for m in listing.get("data", [])]


def served_id(cfg) -> str:
    """The model id requests name: engine.served_model, else model.path as given (what `vllm serve PATH` lists)."""
    return cfg.engine.served_model or cfg.model.path


def check(cfg) -> None:
    """lm-eval's API packages are installed, the endpoint answers, and it serves the expected model id."""
    missing = [name for name in API_PACKAGES if find_spec(name) is None]
    if missing:
        raise ConfigError(f"engine=server needs {', '.join(missing)} (lm-eval's API models); install with: {INSTALL}")
    url = cfg.engine.base_url
    ids = served_models(url, min(cfg.engine.timeout_s, 10.0))
    want = served_id(cfg)
    if want in ids:
        return
    what = "engine.served_model" if cfg.engine.served_model else "model.path"
    listed = ", ".join(repr(i) for i in ids) or "no model"
    hint = (f"; if it is the same model under another name, set engine.served_model={ids[0]} (its probe "
            f"log-likelihood is then checked against the baseline's)" if len(ids) == 1 and not cfg.engine.served_model else "")
    raise ConfigError(f"engine.base_url={url} serves {listed}, not {what}={want!r}{hint}")


def lm_class():
    """lm-eval's local-completions model, taking flipbench's tokenizer object (model.path's) instead of a name."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    class ServedCompletions(LocalCompletionsAPI):
        def __init__(self, tokenizer, **kwargs):
            super().__init__(tokenizer_backend="none", **kwargs)  # no tokenizer loaded by name ...
            self.tokenizer_backend, self.tokenizer, self.tokenized_requests = "huggingface", tokenizer, True  # ... ours

    return ServedCompletions


def max_length(cfg, tokenizer) -> int:
    """Context length for truncation, as the HF engine resolves it (engine.max_model_len overrides)."""
    if cfg.engine.max_model_len:
        return int(cfg.engine.max_model_len)
    from flipbench import budget, models

    config = models.check_model(cfg.model.path, cfg.model.revision, cfg.model.trust_remote_code,
                                gguf_file=cfg.model.gguf_file)
    return budget.context_length(config, tokenizer)


def build(cfg, tokenizer, batch_size: int):
    """local-completions on engine.base_url: ``batch_size`` prompts per request, engine.num_concurrent requests in
    flight, engine.max_retries and engine.timeout_s per request."""
    engine = cfg.engine
    return lm_class()(tokenizer, base_url=completions_url(engine.base_url), model=served_id(cfg),
                      batch_size=batch_size, num_concurrent=engine.num_concurrent, max_retries=engine.max_retries,
                      timeout=int(engine.timeout_s), seed=cfg.eval.seed, max_length=max_length(cfg, tokenizer),
                      # encode as HFLM does: with the tokenizer's own special tokens (a BOS where it adds one);
                      # local-completions would otherwise encode without them
                      add_bos_token=True)
