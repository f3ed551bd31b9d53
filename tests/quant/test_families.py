"""Architecture discovery: decoder blocks, quantizable weights, traced true-sequential groups, MoE experts."""

import copy

import pytest
import torch

from flipbench.compress import QuantConfig, compress
from flipbench.compress import families
from flipbench.compress.experts import expert_output
from flipbench.compress.families import block_linears, decoder_layers, family_of, quantizable_linears, weight_matrix
from flipbench.compress.layerwise import collect_inputs, layer_by_layer, sequential_groups
from flipbench.compress.quant.grid import GridSpec, rtn
from .tiny_models import CONFIGS, MOE, random_ids, tiny_model

CALIB = random_ids(8, 32)

BLOCKS = {
    "llama": "model.layers",
    "gpt2": "transformer.h",
    "opt": "model.decoder.layers",
    "gpt_neox": "gpt_neox.layers",
    "falcon": "transformer.h",
    "mixtral": "model.layers",
}


@pytest.mark.parametrize("model_type", list(BLOCKS))
def test_blocks_are_found_without_a_table(model_type):
    model = tiny_model(model_type)
    assert family_of(model).layers == BLOCKS[model_type]
    assert len(decoder_layers(model)) == 2


def test_blocks_path_table_overrides_the_rules(monkeypatch):
    model = tiny_model("opt")
    monkeypatch.setitem(families.BLOCKS_PATH, "opt", "model.decoder.layers")
    assert family_of(model).layers == "model.decoder.layers"


ATTN = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
GROUPS = {
    # q, k, v read the same normed hidden states; o reads attention; gate and up the same normed states
    "llama": [ATTN, ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]],
    "gemma3_text": [ATTN, ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]],
    "phi3": [["self_attn.qkv_proj"], ["self_attn.o_proj"], ["mlp.gate_up_proj"], ["mlp.down_proj"]],
    "gpt2": [["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]],
    # Falcon's attention and MLP read the same normed input (parallel attention): one group
    "falcon": [["self_attention.query_key_value", "mlp.dense_h_to_4h"], ["self_attention.dense"], ["mlp.dense_4h_to_h"]],
    # Qwen2-MoE: the shared expert and the routed experts read the same states; the experts' down
    # projections need their own up projections first; shared_expert_gate (a router) is not quantized
    "qwen2_moe": [
        ATTN,
        ["self_attn.o_proj"],
        ["mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"]
        + [f"mlp.experts.{e}.gate_up_proj" for e in range(4)],
        ["mlp.shared_expert.down_proj"],
        [f"mlp.experts.{e}.down_proj" for e in range(4)],
    ],
}


@pytest.mark.parametrize("model_type", list(GROUPS))
def test_true_sequential_groups_come_from_a_traced_forward(model_type):
    model = tiny_model(model_type)
    for _, block, _, inputs in layer_by_layer(model, CALIB[:1], "cpu"):
        assert [sorted(g) for g in sequential_groups(block, inputs)] == [sorted(g) for g in GROUPS[model_type]]
        break


@pytest.mark.parametrize("model_type", MOE)
def test_routers_stay_16_bit_and_every_expert_is_a_weight(model_type):
    model = tiny_model(model_type)
    names = block_linears(decoder_layers(model)[0])
    assert not any(name.endswith(("gate", "router")) for name in names)
    assert sum(name.startswith("mlp.experts.") for name in names) == 2 * 4  # up and down of 4 experts
    q_model = copy.deepcopy(model)
    compress(q_model, QuantConfig(method="gptq", bits=3), calib=CALIB)
    for (name, before), (_, after) in zip(model.named_parameters(), q_model.named_parameters()):
        quantized = ".experts." in name or name.endswith("_proj.weight")
        assert torch.equal(before, after) != quantized, name


@pytest.mark.parametrize("model_type", MOE)
def test_expert_matrices_reproduce_the_installed_experts_forward(model_type):
    # reading the routing from top_k_index must be what transformers does with it, whatever kernel it uses
    model = tiny_model(model_type)
    experts = decoder_layers(model)[0].mlp.experts
    hidden = torch.randn(20, 64, generator=torch.Generator().manual_seed(0))
    top_k_index = torch.stack([torch.randperm(4)[:2] for _ in range(20)])
    top_k_weights = torch.rand(20, 2)
    with torch.no_grad():
        torch.testing.assert_close(
            expert_output(experts, hidden, top_k_index, top_k_weights), experts(hidden, top_k_index, top_k_weights)
        )


def test_each_expert_gets_only_its_routed_tokens():
    model = tiny_model("mixtral")
    block = decoder_layers(model)[0]
    experts = block.mlp.experts
    call = {}
    experts.register_forward_pre_hook(lambda mod, args: call.update(hidden=args[0], index=args[1]))
    seen = {}
    with collect_inputs(block, list(block_linears(block)), seen.__setitem__), torch.no_grad():
        for _, layer, _, inputs in layer_by_layer(model, CALIB[:1], "cpu"):
            layer(inputs.hidden[0], *inputs.args[0], **inputs.kwargs[0])
            break
    for e in range(4):
        tokens = (call["index"] == e).any(dim=-1)  # (T,)
        assert 0 < int(tokens.sum()) < len(tokens)
        torch.testing.assert_close(seen[f"mlp.experts.{e}.gate_up_proj"], call["hidden"][tokens])
        gate, up = (call["hidden"][tokens] @ experts.gate_up_proj[e].t()).chunk(2, dim=-1)
        torch.testing.assert_close(seen[f"mlp.experts.{e}.down_proj"], experts.act_fn(gate) * up)


def _never_route_to(expert: int):
    """A router forward hook: the router as it is, except that `expert` is never in the top k."""

    def hook(router, args, out):
        logits = out[0].clone()
        logits[:, expert] = float("-inf")
        top, index = torch.topk(torch.softmax(logits.float(), dim=-1), router.top_k, dim=-1)
        return out[0], top / top.sum(dim=-1, keepdim=True), index

    return hook


def test_an_expert_no_token_reaches_is_quantized_with_rtn_and_counted():
    model = tiny_model("mixtral")
    for block in decoder_layers(model):
        block.mlp.gate.register_forward_hook(_never_route_to(3))
    original = {name: weight_matrix(w).clone() for name, w in quantizable_linears(model).items()}
    report = compress(model, QuantConfig(method="gptq", bits=3, group_size=48), calib=CALIB)
    unreached = {f"model.layers.{i}.mlp.experts.3.{p}" for i in range(2) for p in ("gate_up_proj", "down_proj")}
    assert set(report["unreached_rtn"]) == unreached and report["n_unreached_rtn"] == 4
    for name, W in original.items():
        Q = weight_matrix(quantizable_linears(model)[name])
        assert torch.equal(Q, rtn(W, GridSpec(bits=3), 48)) == (name in unreached), name


# A representative subset by default (Llama-like, fused QKV, Conv1D, parallel attention, MoE with and without a
# shared expert); the rest under -m slow.
REPRESENTATIVE = {"llama", "gemma3_text", "phi3", "gpt2", "falcon", "mixtral", "qwen2_moe"}


@pytest.mark.parametrize(
    "model_type", [pytest.param(m, marks=() if m in REPRESENTATIVE else pytest.mark.slow) for m in CONFIGS]
)
def test_tacq_runs_on_every_architecture(model_type):
    model = tiny_model(model_type)
    report = compress(
        model, QuantConfig(method="tacq", bits=2, group_size=48, keep_fraction=0.01),
        calib=CALIB, task_calib=random_ids(2, 16, seed=3),
    )
    n = report["n_quantized_params"]
    assert report["n_kept"] == -(-n // 100) and n == sum(w.weight.numel() for w in quantizable_linears(model).values())
    assert torch.isfinite(model(input_ids=CALIB[:1]).logits).all()
