"""Mixture-of-experts blocks whose experts are fused into 3-D parameters, seen as one matrix per expert.

transformers 5 stores all experts of a block in one module (MixtralExperts, Qwen2MoeExperts, Qwen3MoeExperts,
OlmoeExperts, ...) with parameters ``gate_up_proj`` (E, 2·I, H) (``up_proj`` when the experts have no gate)
and ``down_proj`` (E, H, I), transposed where ``is_transposed``, and dispatches its forward to eager, batched
or grouped kernels. No per-expert module exists to hook, so each expert's slice is one quantizable matrix
(:class:`ExpertWeight`), and the tokens routed to an expert are read from the router's ``top_k_index`` that
the experts module receives: the up projection's inputs are the routed hidden states, the down projection's
are the gated activations computed with the expert's *current* up weight, so an up projection quantized first
feeds the down projection's Hessian, as true-sequential order wants. Routers are separate parameters (not
linears) and stay 16-bit.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def is_fused_experts(module: nn.Module) -> bool:
    """A transformers experts module (decorated by ``use_experts_implementation``) with 3-D weights."""
    down = getattr(module, "down_proj", None)
    return hasattr(module, "has_gate") and isinstance(down, nn.Parameter) and down.dim() == 3


class ExpertWeight:
    """One expert's (out, in) matrix inside a fused parameter; duck-types the ``.weight`` of a linear."""

    def __init__(self, experts: nn.Module, param_name: str, index: int):
        self.experts, self.param_name, self.index = experts, param_name, index

    @property
    def param(self) -> nn.Parameter:
        return getattr(self.experts, self.param_name)

    @property
    def weight(self) -> torch.Tensor:
        """The expert's slice in stored layout, a view: writing into it writes into the fused parameter."""
        return self.param.data[self.index]

    @property
    def grad(self) -> torch.Tensor | None:
        return None if self.param.grad is None else self.param.grad[self.index]

    @property
    def transposed(self) -> bool:  # stored (in, out)
        return bool(getattr(self.experts, "is_transposed", False))

    def bias(self) -> torch.Tensor | None:
        bias = getattr(self.experts, f"{self.param_name}_bias", None)
        return None if bias is None or not getattr(self.experts, "has_bias", False) else bias[self.index]

    def __repr__(self) -> str:
        return f"ExpertWeight({type(self.experts).__name__}.{self.param_name}[{self.index}])"


def _up_name(experts: nn.Module) -> str:
    return "gate_up_proj" if experts.has_gate else "up_proj"


def expert_weights(experts: nn.Module) -> dict[str, ExpertWeight]:
    """'<expert>.<up name>' and '<expert>.down_proj' -> ExpertWeight, expert by expert."""
    up = _up_name(experts)
    return {
        f"{e}.{name}": ExpertWeight(experts, name, e)
        for e in range(experts.down_proj.shape[0])
        for name in (up, "down_proj")
    }


def _linear(x: torch.Tensor, weight: ExpertWeight) -> torch.Tensor:
    W = weight.weight.t() if weight.transposed else weight.weight  # (out, in)
    out = x @ W.t().to(x.dtype)
    bias = weight.bias()
    return out if bias is None else out + bias.to(out.dtype)


def routed_inputs(experts: nn.Module, args: tuple, kwargs: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """For a call experts(hidden (T, H), top_k_index (T, k), top_k_weights): yield (name, X) per expert
    that received tokens — first its up projection's inputs (n_e, H), then its down projection's (n_e, I),
    names as expert_weights gives them. Experts no token reached yield nothing."""
    names = ("hidden_states", "top_k_index")
    hidden, top_k_index = (list(args) + [kwargs.get(n) for n in names[len(args):]])[:2]
    up = _up_name(experts)
    for e in range(experts.down_proj.shape[0]):
        tokens = (top_k_index == e).any(dim=-1).nonzero().flatten()  # tokens routed to e: (n_e,)
        if tokens.numel() == 0:
            continue
        x = hidden[tokens]  # (n_e, H)
        yield f"{e}.{up}", x
        h = _linear(x, ExpertWeight(experts, up, e))
        yield f"{e}.down_proj", experts._apply_gate(h) if experts.has_gate else experts.act_fn(h)


def expert_output(experts: nn.Module, hidden: torch.Tensor, top_k_index, top_k_weights) -> torch.Tensor:
    """The experts module's output recomputed expert by expert from ExpertWeight slices (tests use it to
    check that routed_inputs reads the routing as the installed transformers applies it)."""
    out = torch.zeros_like(hidden, dtype=torch.float32)
    up = _up_name(experts)
    for e in range(experts.down_proj.shape[0]):
        token, slot = (top_k_index == e).nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        h = _linear(hidden[token], ExpertWeight(experts, up, e))
        h = experts._apply_gate(h) if experts.has_gate else experts.act_fn(h)
        y = _linear(h, ExpertWeight(experts, "down_proj", e))
        if getattr(experts, "has_post_expert_norm", False):
            y = experts.post_expert_norm(y)
        out.index_add_(0, token, (y * top_k_weights[token, slot, None]).float())
    return out.to(hidden.dtype)
