"""Tiny random causal LMs of every supported family, built from configs (nothing is downloaded)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
)

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

CONFIGS = {
    "llama": lambda: LlamaConfig(**_LLAMA_LIKE),
    "mistral": lambda: MistralConfig(**_LLAMA_LIKE),
    "qwen2": lambda: Qwen2Config(**_LLAMA_LIKE),
    "phi3": lambda: Phi3Config(**_LLAMA_LIKE, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=128),
    "opt": lambda: OPTConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        ffn_dim=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=128,
        word_embed_proj_dim=HIDDEN,
        pad_token_id=1,
    ),
}


def tiny_model(model_type: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(CONFIGS[model_type]()).eval()


def random_ids(n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n_samples, seq_len), generator=torch.Generator().manual_seed(seed))
