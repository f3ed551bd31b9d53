"""TACQ: saliency, the global top-k mask, exact kept counts, weights kept off the grid, avg_bits by hand."""

import copy

import pytest
import torch
import torch.nn.functional as F

from flipbench.compress.families import family_of, quantizable_linears, weight_matrix
from flipbench.compress import QuantConfig, compress
from flipbench.compress.quant.gptq import gptq_model
from flipbench.compress.gradients import gradient_magnitudes
from flipbench.compress.quant.tacq import n_to_keep, saliency, salient_masks, top_k_masks
from .tiny_models import random_ids, tiny_model

CALIB = random_ids(8, 32)
TASK = random_ids(3, 20, seed=7)
# tiny llama, per layer: q 64·64, k and v 32·64, o 64·64, gate and up 128·64, down 64·128 -> 36864; 2 layers
N_PARAMS = 2 * 36864


def test_saliency_by_hand():
    # |W|·G·|Q−W|: 2·0.5·0.5 = 0.5; the second entry is not moved by quantization, so 0
    S = saliency(torch.tensor([[-2.0, 1.0]]), torch.tensor([[0.5, 3.0]]), torch.tensor([[-1.5, 1.0]]))
    torch.testing.assert_close(S, torch.tensor([[0.5, 0.0]]))


def test_top_k_is_global_across_layers():
    scores = {"a": torch.tensor([[5.0, 1.0], [3.0, 0.0]]), "b": torch.tensor([[4.0, 2.0, 6.0]])}
    masks = top_k_masks(scores, 3)  # 6 (b), 5 (a), 4 (b)
    assert masks["a"].tolist() == [[True, False], [False, False]]
    assert masks["b"].tolist() == [[True, False, True]]
    assert sum(int(m.sum()) for m in top_k_masks(scores, 0).values()) == 0


def test_n_to_keep_is_the_ceiling():
    assert n_to_keep(0.0035, N_PARAMS) == 259  # 258.048 -> 259
    assert n_to_keep(0.07, 100) == 7  # 0.07·100 is 7.000000000000001 in floating point
    assert n_to_keep(0.5, 3) == 2


@pytest.mark.parametrize("checkpointing", [True, False])
def test_gradients_are_summed_absolute_per_sample_gradients(checkpointing):
    model = tiny_model("llama")
    probe = copy.deepcopy(model)
    G = gradient_magnitudes(probe, TASK, "cpu", checkpointing=checkpointing)
    assert all(p.requires_grad and p.grad is None for p in probe.parameters())  # flags restored, grads freed
    name = "model.layers.1.mlp.down_proj"
    expected = torch.zeros_like(G[name])
    for row in TASK:
        model.zero_grad()
        logits = model(input_ids=row[None]).logits[0]
        F.cross_entropy(logits[:-1], row[1:]).backward()
        expected += model.get_submodule(name).weight.grad.abs()
    torch.testing.assert_close(G[name], expected)


def test_tacq_keeps_exactly_k_weights_off_the_grid():
    model = tiny_model("llama")
    family = family_of(model)
    cfg = QuantConfig(method="tacq", bits=3, keep_fraction=0.01)
    original = {name: weight_matrix(m, family).clone() for name, m in quantizable_linears(model).items()}

    masks, _ = salient_masks(model, CALIB, TASK, cfg.gptq, cfg.keep_fraction, "cpu")
    for name, module in quantizable_linears(model).items():  # the search leaves the weights as they were
        assert torch.equal(weight_matrix(module, family), original[name])
    assert sum(int(m.sum()) for m in masks.values()) == 738  # ceil(0.01 · 73728) = ceil(737.28)

    two_steps = copy.deepcopy(model)
    gptq_model(two_steps, CALIB, cfg.gptq, "cpu", keep=masks)
    for name, W in original.items():
        keep = masks[name]
        # per-channel 3-bit grid fitted on W with kept entries replaced by the row mean of the others
        mean = (W * ~keep).sum(1, keepdim=True) / (~keep).sum(1, keepdim=True)
        W_fit = torch.where(keep, mean, W)
        xmin, xmax = W_fit.min(1, keepdim=True).values.clamp(max=0), W_fit.max(1, keepdim=True).values.clamp(min=0)
        scale = (xmax - xmin) / 7
        levels = weight_matrix(two_steps.get_submodule(name), family) / scale + torch.round(-xmin / scale)
        on_grid = (levels - levels.round()).abs() < 1e-5  # fp32 rounding of scale·(q − zero) is ~1e-6 levels
        assert on_grid[~keep].all(), name
        assert not on_grid[keep].any(), name

    report = compress(model, cfg, calib=CALIB, task_calib=TASK)
    for (name, a), (_, b) in zip(model.named_parameters(), two_steps.named_parameters()):
        assert torch.equal(a, b), name  # compress is exactly: search the masks, then GPTQ with them
    assert report["n_kept"] == 738 and report["n_quantized_params"] == N_PARAMS
    # 3 + (16 + 3)/in_features (in = 64, but 128 for down_proj's 8192 weights per layer) + 32 · 738 / 73728
    expected = 3 + (28672 * 19 / 64 + 8192 * 19 / 128) / 36864 + 32 * 738 / N_PARAMS
    assert report["avg_bits"] == pytest.approx(expected)
    assert report["avg_bits"] == pytest.approx(3.5842013888888889)
    assert set(report["seconds"]) >= {"gradients", "gptq_pass1", "saliency", "gptq_pass2"}


def test_keep_fraction_zero_is_plain_gptq():
    model = tiny_model("gpt2")
    tacq, gptq = copy.deepcopy(model), copy.deepcopy(model)
    compress(tacq, QuantConfig(method="tacq", bits=3, keep_fraction=0.0), calib=CALIB)
    compress(gptq, QuantConfig(method="gptq", bits=3), calib=CALIB)
    assert all(torch.equal(a, b) for a, b in zip(tacq.parameters(), gptq.parameters()))


@pytest.mark.parametrize("model_type", ["gpt2", "opt", "phi3"])
def test_general_text_calibration_works(model_type):
    # task_calib omitted: gradients come from the general calibration text
    model = tiny_model(model_type)
    report = compress(model, QuantConfig(method="tacq", bits=2, group_size=32, keep_fraction=0.02), calib=CALIB)
    assert report["n_kept"] == n_to_keep(0.02, report["n_quantized_params"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_tacq_is_deterministic():
    model = tiny_model("mistral")
    runs = []
    for _ in range(2):
        copy_ = copy.deepcopy(model)
        compress(copy_, QuantConfig(method="tacq", bits=3, keep_fraction=0.01), calib=CALIB, task_calib=TASK)
        runs.append(copy_)
    assert all(torch.equal(a, b) for a, b in zip(runs[0].parameters(), runs[1].parameters()))


def test_gradient_step_frees_each_linear_gradient_as_soon_as_it_is_folded(monkeypatch):
    import flipbench.compress.gradients as tacq  # the whole-model pass folds each gradient as backward makes it

    model = tiny_model("llama")
    linears = quantizable_linears(model)
    alive, original = [], tacq.weight_grad_matrix

    def counting(module, family=None):
        alive.append(sum(m.weight.grad is not None for m in linears.values()))
        return original(module, family)

    monkeypatch.setattr(tacq, "weight_grad_matrix", counting)
    gradient_magnitudes(model, TASK, "cpu", checkpointing=False)
    assert len(alive) == len(TASK) * len(linears)
    assert max(alive) == 1  # never two linears' gradients at once, let alone all of them


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_salient_masks_restore_the_original_weights_bit_for_bit(model_type):
    from flipbench.compress.quant.gptq import GPTQSettings
    from flipbench.compress.quant.grid import GridSpec

    model = tiny_model(model_type)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    masks, _ = salient_masks(model, CALIB, TASK, GPTQSettings(grid=GridSpec(bits=3)), 0.01, "cpu")
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert sum(int(m.sum()) for m in masks.values()) > 0
