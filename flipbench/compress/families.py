"""Model-family knowledge, in one table keyed by ``config.model_type``.

Everything the quantizers need to know about an architecture lives here: where the decoder layers are,
which linears each layer holds in true-sequential order (a group's inputs depend only on earlier groups),
and whether the linears are GPT-2 ``Conv1D`` (weight stored transposed, ``(in, out)``). Embeddings and
``lm_head`` are outside the decoder layers and are never quantized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Family:
    layers: str  # attribute path from the *ForCausalLM model to the ModuleList of decoder layers
    groups: tuple[tuple[str, ...], ...]  # linears of one layer, in true-sequential groups
    conv1d: bool = False  # GPT-2 Conv1D: weight is (in, out), y = x @ weight + bias

    @property
    def linears(self) -> tuple[str, ...]:
        return tuple(name for group in self.groups for name in group)


_LLAMA_LIKE = Family(
    layers="model.layers",
    groups=(
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    ),
)

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "phi3": Family(
        layers="model.layers",
        groups=(("self_attn.qkv_proj",), ("self_attn.o_proj",), ("mlp.gate_up_proj",), ("mlp.down_proj",)),
    ),
    "gpt2": Family(
        layers="transformer.h",
        groups=(("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",), ("mlp.c_proj",)),
        conv1d=True,
    ),
    "opt": Family(
        layers="model.decoder.layers",
        groups=(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            ("self_attn.out_proj",),
            ("fc1",),
            ("fc2",),
        ),
    ),
}


def family_of(model: nn.Module) -> Family:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"model_type {model_type!r} is not supported for quantization; supported: {', '.join(sorted(FAMILIES))} "
            "(add a row to flipbench/families.py, or use compression=checkpoint)"
        )
    return FAMILIES[model_type]


def decoder_layers(model: nn.Module, family: Family) -> nn.ModuleList:
    return model.get_submodule(family.layers)


def quantizable_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Full name -> module for every quantized linear, in layer order then true-sequential order."""
    family = family_of(model)
    return {
        f"{family.layers}.{index}.{name}": layer.get_submodule(name)
        for index, layer in enumerate(decoder_layers(model, family))
        for name in family.linears
    }


def weight_matrix(module: nn.Module, family: Family) -> torch.Tensor:
    """The weight as W (out, in), a view of the stored tensor (Conv1D stores its transpose)."""
    return module.weight.data.t() if family.conv1d else module.weight.data


def set_weight_matrix(module: nn.Module, family: Family, W: torch.Tensor) -> None:
    """Write W (out, in) back into the module, keeping its dtype and device."""
    target = module.weight.data
    target.copy_((W.t() if family.conv1d else W).to(dtype=target.dtype, device=target.device))


def weight_grad_matrix(module: nn.Module, family: Family) -> torch.Tensor:
    """∂L/∂W laid out like weight_matrix: (out, in)."""
    return module.weight.grad.t() if family.conv1d else module.weight.grad


def in_features(module: nn.Module, family: Family) -> int:
    return weight_matrix(module, family).shape[1]
