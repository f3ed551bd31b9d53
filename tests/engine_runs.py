"""Helpers for the engine tests: one side through any engine's lm-eval LM, as pipeline.evaluate_side does, and
the per-doc comparison of two sides' frames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from flipbench import evaluate, models, pipeline
from flipbench.config import to_typed
from tests.conftest import compose


@dataclass
class Setup:
    cfg: object
    plan: object
    tasks: dict
    tokenizer: object


def setup(overrides: list[str]) -> Setup:
    """The typed config, task plan, lm-eval Task objects and tokenizer, as pipeline.run prepares them."""
    cfg = to_typed(compose(overrides))
    plan = pipeline.preflight(cfg)
    tasks, tokenizer, _ = pipeline.prepare(cfg, plan)
    return Setup(cfg, plan, tasks, tokenizer)


def tiny_overrides(limit: int = 8, extra: tuple[str, ...] = ()) -> list[str]:
    """The bundled tiny model on its synthetic suite (MMLU-, ARC-, HellaSwag- and GSM8k-shaped), first docs only."""
    return ["model=tiny", "suite=tiny", f"suite.limit={limit}", "eval.batch_size=4", *extra]


def random_llama_overrides(model_dir, tasks_dir, limit: int = 8, extra: tuple[str, ...] = ()) -> list[str]:
    return [f"model.path={model_dir}", "model.dtype=float32", f"suite.include_path={tasks_dir}",
            "suite.tasks=[mini_mc,mini_gen]", "+suite.metrics.mini_mc=[acc_norm,acc]", f"suite.limit={limit}",
            "eval.batch_size=4", *extra]


def build_random_llama_for_vllm(folder, seed: int = 0):
    """conftest's tiny random Llama (its trained BPE tokenizer), with head_dim 32: vLLM's CPU attention has no
    kernel for conftest's head_dim 16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import build_random_llama

    build_random_llama(folder, seed)
    small = LlamaConfig.from_pretrained(folder)
    config = LlamaConfig(vocab_size=small.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=small.bos_token_id, eos_token_id=small.eos_token_id, pad_token_id=small.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def side(lm, s: Setup) -> pd.DataFrame:
    """One side's per-sample frame through ``lm`` (pipeline.evaluate_side without the progress line)."""
    cfg = s.cfg
    raw = evaluate.run_lm_eval(lm, s.tasks, s.plan, limit=cfg.suite.limit, num_fewshot=dict(cfg.suite.num_fewshot),
                               seed=cfg.eval.seed, task_limits=dict(cfg.suite.task_limits))
    return evaluate.samples_frame(raw, s.tasks, s.plan, dict(cfg.suite.metrics), cfg.suite.subject_field)


def load(s: Setup, path: str | None = None):
    return models.load_model(s.cfg.model, path, tokenizer=s.tokenizer)[0]


def rtn(model, s: Setup, bits: int = 3):
    """The model RTN-quantized in place (per channel, data-free): the compressed side."""
    from flipbench.compress import compress
    from flipbench.compress.quant.config import QuantConfig

    grids: dict = {}
    compress(model, QuantConfig(bits=bits, group_size=-1), calib=None, task_calib=None, device=model.device,
             progress=lambda *_: None, grids=grids)
    return grids


KEYS = ["task", "group", "doc_id", "filter"]


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Per-doc agreement of two frames of the same side on two engines: {answers, correct, max_dll, rows}."""
    m = a.merge(b, on=KEYS, suffixes=("_a", "_b"), validate="one_to_one")
    assert len(m) == len(a) == len(b), "the two engines evaluated different docs"
    assert (m["doc_hash_a"] == m["doc_hash_b"]).all() and (m["prompt_hash_a"] == m["prompt_hash_b"]).all()
    dll = [np.max(np.abs(np.asarray(x) - np.asarray(y))) if len(x) else 0.0 for x, y in zip(m["ll_a"], m["ll_b"])]
    return {"rows": len(m), "answers": int((m["pred_a"] == m["pred_b"]).sum()),
            "correct": int((m["correct_a"] == m["correct_b"]).sum()), "max_dll": float(max(dll, default=0.0))}


def flips(base: pd.DataFrame, comp: pd.DataFrame) -> pd.Series:
    """Per (task, group, doc_id, filter): +1 gained, -1 lost, 0 unchanged."""
    m = base.merge(comp, on=KEYS, suffixes=("_b", "_c"), validate="one_to_one")
    return pd.Series((m["correct_c"] - m["correct_b"]).to_numpy(), index=pd.MultiIndex.from_frame(m[KEYS]))
