"""Tiny random causal LMs of many architectures, built from configs (nothing is downloaded).

None of them has a table row anywhere in flipbench: blocks, linears and true-sequential groups are derived.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
from transformers import AutoConfig, AutoModelForCausalLM

VOCAB, HIDDEN, INTERMEDIATE, LAYERS, HEADS = 128, 64, 128, 2, 4

_LLAMA_LIKE = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=INTERMEDIATE,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
_TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_MOE = dict(num_experts_per_tok=2, **_LLAMA_LIKE)

CONFIGS = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": dict(_LLAMA_LIKE, head_dim=16),
    "gemma2": dict(_LLAMA_LIKE, head_dim=16),
    "gemma3_text": dict(_LLAMA_LIKE, head_dim=16, sliding_window=8),
    "olmo2": dict(_LLAMA_LIKE, **_TOKENS),
    "phi3": dict(_LLAMA_LIKE, **_TOKENS),
    "gpt_neox": dict(_LLAMA_LIKE, **_TOKENS),
    "falcon": dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS),
    "gpt2": dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=128, **_TOKENS),
    "opt": dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        ffn_dim=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=128,
        word_embed_proj_dim=HIDDEN,
        pad_token_id=1,
    ),
    # mixture of experts: 4 experts, 2 per token
    "mixtral": dict(_MOE, num_local_experts=4),
    "qwen2_moe": dict(_MOE, num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=64),
    "qwen3_moe": dict(_MOE, num_experts=4, moe_intermediate_size=32, head_dim=16),
    "olmoe": dict(_MOE, num_experts=4, **_TOKENS),
}
MOE = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


@lru_cache(maxsize=None)
def _built(model_type: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **CONFIGS[model_type])).eval()


def tiny_model(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A fresh copy (tests quantize in place) of the model built once per session."""
    return copy.deepcopy(_built(model_type, seed))


def random_ids(n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n_samples, seq_len), generator=torch.Generator().manual_seed(seed))
