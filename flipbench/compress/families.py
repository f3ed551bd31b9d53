"""Where a decoder-only causal LM keeps its quantizable weights, derived from the model itself.

- Decoder blocks: the ``nn.ModuleList`` whose entries are of a class the model names in
  ``_no_split_modules`` (transformers' unit that is never split across devices is the decoder block);
  failing that, the outermost, longest ``ModuleList`` of identical blocks that hold linears.
- A block's quantizable weights: every ``nn.Linear`` and GPT-2 ``Conv1D`` (weight stored transposed,
  ``(in, out)``) inside it, except routers, plus one matrix per expert of fused mixture-of-experts
  parameters (experts.py).
- True-sequential groups are not listed anywhere: they come from a traced forward of one block
  (layerwise.py), so a new architecture needs no table row.
What the module tree cannot tell is in the two small tables below. Embeddings and ``lm_head`` are outside the
blocks and never quantized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from flipbench.compress.experts import ExpertWeight, expert_weights, is_fused_experts

# Linears that route tokens to experts stay 16-bit: quantizing a router changes which experts run, not just
# how well. Matched on the last component of the module name (older transformers' Mixtral `gate`,
# Qwen2-MoE's `shared_expert_gate`; newer routers are plain parameters, not linears).
ROUTER_NAMES = frozenset({"gate", "router", "shared_expert_gate"})

# model_type -> attribute path of the decoder blocks, for a model whose blocks the rules below miss. Empty:
# every architecture tested (see docs/quantization.md) is found by the rules; a user's exotic model gets a row here.
BLOCKS_PATH: dict[str, str] = {}


@dataclass(frozen=True)
class Family:
    """The derived layout of one model."""

    layers: str  # attribute path from the *ForCausalLM model to the ModuleList of decoder blocks


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """(path, list) of every non-empty ModuleList of same-class entries that hold a linear, outermost first."""
    found = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1 or isinstance(module[0], (nn.Linear, Conv1D)):
            continue
        if not block_linears(module[0]):
            continue
        if any(path.startswith(outer + ".") for outer, _ in found):
            continue  # e.g. an older MoE's list of expert MLPs inside a block
        found.append((path, module))
    return found


def family_of(model: nn.Module) -> Family:
    """Find the decoder blocks; raises ValueError with one line naming the problem and the fix."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in BLOCKS_PATH:
        return Family(layers=BLOCKS_PATH[model_type])
    candidates = _block_lists(model)
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    named = [(path, blocks) for path, blocks in candidates if type(blocks[0]).__name__ in no_split]
    chosen = named or candidates
    if not chosen:
        raise ValueError(
            f"no decoder blocks found in {type(model).__name__} (model_type {model_type!r}): flipbench looks for "
            "a ModuleList of identical blocks holding nn.Linear/Conv1D layers; add the blocks' attribute path "
            "for this model_type to BLOCKS_PATH in flipbench/compress/families.py, or use compression=checkpoint"
        )
    path, _ = max(chosen, key=lambda item: len(item[1]))
    return Family(layers=path)


def decoder_layers(model: nn.Module, family: Family | None = None) -> nn.ModuleList:
    return model.get_submodule((family or family_of(model)).layers)


def block_linears(block: nn.Module) -> dict[str, nn.Module | ExpertWeight]:
    """Relative name -> quantizable linear (or expert matrix) of one block, in module order."""
    found = {}
    fused = []
    for name, module in block.named_modules():
        if any(name.startswith(prefix + ".") for prefix in fused):
            continue
        if is_fused_experts(module):
            fused.append(name)
            found.update({f"{name}.{key}": weight for key, weight in expert_weights(module).items()})
        elif isinstance(module, (nn.Linear, Conv1D)) and name.rsplit(".", 1)[-1] not in ROUTER_NAMES:
            found[name] = module
    return found


def quantizable_linears(model: nn.Module) -> dict[str, nn.Module | ExpertWeight]:
    """Full name -> module (or expert matrix) for every quantized weight, block by block."""
    family = family_of(model)
    return {
        f"{family.layers}.{index}.{name}": module
        for index, block in enumerate(decoder_layers(model, family))
        for name, module in block_linears(block).items()
    }


def _transposed(module) -> bool:
    return isinstance(module, Conv1D) or getattr(module, "transposed", False) is True


def weight_param(module) -> nn.Parameter:
    """The parameter that holds the module's weight (for an expert: the fused parameter of all experts)."""
    return module.param if isinstance(module, ExpertWeight) else module.weight


def weight_matrix(module, family: Family | None = None) -> torch.Tensor:
    """The weight as W (out, in), a view of the stored tensor (Conv1D stores its transpose). family is
    accepted for older callers and unused: the layout is the module's own."""
    return module.weight.data.t() if _transposed(module) else module.weight.data


def set_weight_matrix(module, family: Family | None, W: torch.Tensor) -> None:
    """Write W (out, in) back into the module, keeping its dtype and device."""
    target = module.weight.data
    target.copy_((W.t() if _transposed(module) else W).to(dtype=target.dtype, device=target.device))


def weight_grad_matrix(module, family: Family | None = None) -> torch.Tensor:
    """∂L/∂W laid out like weight_matrix: (out, in)."""
    grad = module.grad if isinstance(module, ExpertWeight) else module.weight.grad
    return grad.t() if _transposed(module) else grad


def param_matrix(module, full: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like weight_param(module) (e.g. a summed gradient) as the module's (out, in) matrix:
    an expert's slice of a fused parameter, Conv1D transposed."""
    part = full[module.index] if isinstance(module, ExpertWeight) else full
    return part.t() if _transposed(module) else part


def in_features(module, family: Family | None = None) -> int:
    return weight_matrix(module).shape[1]
