"""RTN and GPTQ on tiny random models of many architectures (dense and mixture-of-experts)."""

import copy
from contextlib import ExitStack

import pytest
import torch

from flipbench.compress.families import decoder_layers, family_of, quantizable_linears, weight_matrix
from flipbench.compress import QuantConfig, avg_bits, compress
from flipbench.compress.quant.grid import GridSpec, rtn as rtn_grid
from flipbench.compress.layerwise import collect_inputs, layer_by_layer
from .tiny_models import CONFIGS, MOE, random_ids, tiny_model

CALIB = random_ids(8, 32)  # 256 tokens: more than the widest input (128), so every H is full rank


def linear_inputs(model, ids) -> dict[str, torch.Tensor]:
    """Every quantizable weight's inputs X (tokens, in) on ids, from the model as it is (an expert's: its
    routed tokens)."""
    family = family_of(model)
    inputs = {}
    with ExitStack() as stack, torch.no_grad():
        for index, block in enumerate(decoder_layers(model, family)):
            prefix = f"{family.layers}.{index}."
            names = [name[len(prefix):] for name in quantizable_linears(model) if name.startswith(prefix)]
            record = lambda name, X, prefix=prefix: inputs.__setitem__(prefix + name, X.reshape(-1, X.shape[-1]))
            stack.enter_context(collect_inputs(block, names, record))
        model(input_ids=ids, use_cache=False)
    return inputs


def quantized(model, **cfg):
    model = copy.deepcopy(model)
    return model, compress(model, QuantConfig(**cfg), calib=CALIB)


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_captured_layer_inputs_reproduce_the_model(model_type):
    # the captured args/kwargs (position embeddings, masks...) must make each layer compute what it computes
    # inside the model: layer i's inputs equal the model's hidden_states[i]
    model = tiny_model(model_type)
    with torch.no_grad():
        expected = model(input_ids=CALIB[:2], output_hidden_states=True, use_cache=False).hidden_states
    for index, _layer, _family, inputs in layer_by_layer(model, CALIB[:2], "cpu"):
        torch.testing.assert_close(torch.cat(inputs.hidden), expected[index], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_gptq_layer_output_error_below_rtn(model_type):
    model = tiny_model(model_type)
    X = linear_inputs(model, CALIB)
    original = {name: weight_matrix(m).clone() for name, m in quantizable_linears(model).items()}
    assert set(X) == set(original)  # every weight sees calibration tokens (every expert is routed some)
    gptq, report = quantized(model, method="gptq", bits=3, group_size=48)  # 48: ragged groups on 64 and 128
    rtn, _ = quantized(model, method="rtn", bits=3, group_size=48)
    assert report["n_unreached_rtn"] == 0
    for name, W in original.items():
        errors = {}
        for label, q_model in (("gptq", gptq), ("rtn", rtn)):
            Q = weight_matrix(quantizable_linears(q_model)[name])
            errors[label] = (X[name] @ W.t() - X[name] @ Q.t()).pow(2).sum().item()
        assert errors["gptq"] < errors["rtn"], (name, errors)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt"])
def test_eight_bits_keep_logits_close(model_type, method):
    model = tiny_model(model_type)
    ids = random_ids(2, 24, seed=5)
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        logits = quantized(model, method=method, bits=8)[0](input_ids=ids).logits
    # 8-bit steps are range/255: weights move by ~0.3% of their spread, logits by well under 1%
    assert ((logits - reference).norm() / reference.norm()).item() < 1e-2


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gpt2"])
def test_only_decoder_linear_weights_change(model_type):
    model = tiny_model(model_type)
    q_model, report = quantized(model, method="gptq", bits=3, group_size=32, act_order=True, true_sequential=False)
    weights = {f"{name}.weight" for name in quantizable_linears(model)}
    before, after = dict(model.named_parameters()), dict(q_model.named_parameters())
    for name, param in before.items():
        assert torch.equal(param, after[name]) != (name in weights), name
    assert report["layers_quantized"] == len(weights) and report["decoder_layers"] == 2


def test_same_calibration_gives_identical_weights():
    model = tiny_model("qwen2")
    first, _ = quantized(model, method="gptq", bits=3, group_size=16, mse=True)
    second, _ = quantized(model, method="gptq", bits=3, group_size=16, mse=True)
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
        assert torch.equal(a, b), name


def test_bfloat16_model_keeps_its_dtype():
    model = tiny_model("llama").to(torch.bfloat16)
    q_model, _ = quantized(model, method="gptq", bits=4)
    assert all(p.dtype == torch.bfloat16 for p in q_model.parameters())
    assert torch.isfinite(q_model(input_ids=CALIB[:1]).logits.float()).all()


def test_report_and_progress():
    model = tiny_model("llama")
    lines = []
    report = compress(model, QuantConfig(method="gptq", bits=4), calib=CALIB, progress=lines.append)
    assert lines == ["gptq layer 1/2", "gptq layer 2/2"]
    # per layer: q 64·64, k and v 32·64 (2 kv heads of 16), o 64·64, gate and up 128·64, down 64·128
    n_per_layer = 4096 + 2048 + 2048 + 4096 + 8192 + 8192 + 8192
    assert report["n_quantized_params"] == 2 * n_per_layer
    # per channel: (16 + 4) / in_features, in = 64 everywhere but down_proj (128)
    expected_bits = 4 + ((n_per_layer - 8192) * 20 / 64 + 8192 * 20 / 128) / n_per_layer
    assert report["avg_bits"] == pytest.approx(expected_bits)
    other_bytes = 4 * (sum(p.numel() for p in model.parameters()) - 2 * n_per_layer)  # fp32
    assert report["model_bytes"] == round(other_bytes + 2 * n_per_layer * expected_bits / 8)
    assert report["method"] == "gptq" and report["damp_retries"] == 0 and report["seconds"]["gptq"] > 0


def test_none_leaves_the_model_alone():
    model = tiny_model("opt")
    q_model, report = quantized(model, method="none")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), q_model.parameters()))
    assert report["avg_bits"] == 32.0 and report["n_quantized_params"] == 0


def test_avg_bits_counts_ragged_groups_by_hand():
    # a 576-wide row in groups of 128: 4 groups of 128 + one of 64 = 5 groups, each a 16-bit scale and
    # (asymmetric) a 4-bit zero: 4·576 + 5·(16 + 4) = 2404 bits for 576 weights; symmetric: 2304 + 5·16 = 2384
    assert avg_bits([(1, 576)], bits=4, group_size=128) == pytest.approx(2404 / 576)
    assert avg_bits([(1, 576)], bits=4, group_size=128, sym=True) == pytest.approx(2384 / 576)
    # SmolLM2-135M's MLP: up/gate (1536, 576) as above, down (576, 1536): 12 groups of 128 exactly
    shapes = [(1536, 576), (576, 1536)]
    stored = 1536 * 2404 + 576 * (4 * 1536 + 12 * 20)
    assert avg_bits(shapes, bits=4, group_size=128) == pytest.approx(stored / (2 * 1536 * 576))
    # per channel one group per row; 10 kept weights add 32 bits each
    assert avg_bits([(2, 576)], bits=3, group_size=-1, n_kept=10) == pytest.approx((2 * (3 * 576 + 19) + 320) / 1152)


def test_ragged_groups_quantize_a_576_wide_layer_by_hand():
    # one 576-wide row, groups of 128: the last group (columns 512-575) gets its own grid from its 64 values
    W = torch.randn(3, 576, generator=torch.Generator().manual_seed(0))
    Q = rtn_grid(W, GridSpec(bits=4), 128)
    last = W[:, 512:]
    xmin, xmax = last.min(1, keepdim=True).values.clamp(max=0), last.max(1, keepdim=True).values.clamp(min=0)
    scale = (xmax - xmin) / 15
    zero = torch.round(-xmin / scale)
    expected = scale * (torch.clamp(torch.round(last / scale) + zero, 0, 15) - zero)
    torch.testing.assert_close(Q[:, 512:], expected)
    assert Q[:, 512:].unique().numel() <= 3 * 16


@pytest.mark.parametrize("method", ["rtn", "gptq", "tacq"])
def test_group_size_wider_than_some_layers_and_not_dividing_others(method):
    # tiny llama: widths 64 and 128; group 96 -> one group of 64 / groups of 96 + 32
    model = tiny_model("llama")
    report = compress(model, QuantConfig(method=method, bits=4, group_size=96), calib=CALIB, task_calib=CALIB[:2])
    n_per_layer = 36864  # 28672 weights with in = 64 (1 group), 8192 with in = 128 (2 groups)
    n_kept = report["n_kept"]
    expected = (2 * (28672 * 4 + 28672 // 64 * 20 + 8192 * 4 + 8192 // 128 * 2 * 20) + 32 * n_kept) / (2 * n_per_layer)
    assert report["avg_bits"] == pytest.approx(expected)
