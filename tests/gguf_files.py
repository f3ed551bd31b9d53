"""Write a small Llama as a GGUF file with the gguf package (the metadata and tensor names llama.cpp uses), so
the GGUF loading path can be tested offline against the model it was written from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

# Hugging Face name inside a decoder layer -> GGUF name inside a block (llama.cpp's tensor names)
_BLOCK_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _rotary_interleave(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q/k rows with each head's two rotary halves interleaved (its loader undoes this)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, tokenizer, path: Path, architecture: str = "llama", f16: bool = False) -> Path:
    """model: a LlamaForCausalLM; tokenizer: a byte-level BPE fast tokenizer. Tensors are stored in F32, or
    with f16 the matrices in F16 (norms stay F32, as llama.cpp's converter does)."""
    import gguf

    c = model.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)

    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)

    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    if f16:
        state = {k: v.astype(np.float16) if v.ndim == 2 else v for k, v in state.items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    if not c.tie_word_embeddings:
        writer.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        for hf_name, gguf_name in _BLOCK_TENSORS.items():
            w = state[f"model.layers.{i}.{hf_name}"]
            if gguf_name == "attn_q.weight":
                w = _rotary_interleave(w, c.num_attention_heads)
            elif gguf_name == "attn_k.weight":
                w = _rotary_interleave(w, c.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{gguf_name}", np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_llama_ggufs(folder: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """(source model directory, F32 GGUF, F16 GGUF written from it): a tiny Llama with the test BPE tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.conftest import build_random_llama

    source = build_random_llama(folder / "source", seed)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return (source, write_llama_gguf(model, tokenizer, folder / "tiny-f32.gguf"),
            write_llama_gguf(model, tokenizer, folder / "tiny-f16.gguf", f16=True))


def metadata_only_gguf(path: Path, architecture: str) -> Path:
    """A GGUF file with nothing but its architecture (for the refusal of architectures transformers cannot read)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
