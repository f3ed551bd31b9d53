"""Every pruning method through the one entry point on tiny random models of each supported family: the
measured report (zeros counted, parameters kept, bytes under the stated format) and the cheap checks."""

import math

import pytest
import torch

from flipbench.compress import PruneConfig, compress, needs_data, validate
from flipbench.compress.families import quantizable_linears, weight_matrix
from tests.quant.tiny_models import CONFIGS, random_ids, tiny_model

CASES = {
    "magnitude": PruneConfig(method="magnitude", sparsity=0.25),
    "magnitude-global": PruneConfig(method="magnitude", sparsity=0.625, scope="global"),
    "wanda-2:4": PruneConfig(method="wanda", pattern="2:4"),
    "sparsegpt": PruneConfig(method="sparsegpt", sparsity=0.5, block_size=32),
    "sparsegpt-4:8-w4": PruneConfig(method="sparsegpt", pattern="4:8", bits=4, block_size=32),
    "layerdrop-angular": PruneConfig(method="layerdrop", n_layers=1, select="angular"),
}


# By default: every case on llama, SparseGPT (the Hessian path, traced groups, grids) on every architecture,
# layer dropping on a sliding-window model and a mixture of experts; the rest of the matrix is marked slow.
DEFAULT = {("gemma3_text", "layerdrop-angular"), ("mixtral", "layerdrop-angular")}


def _default(model_type: str, case: str) -> bool:
    return model_type == "llama" or case == "sparsegpt-4:8-w4" or (model_type, case) in DEFAULT


PAIRS = [pytest.param(model_type, case, marks=() if _default(model_type, case) else pytest.mark.slow)
         for model_type in sorted(CONFIGS) for case in CASES]


@pytest.mark.parametrize("model_type,case", PAIRS)
def test_every_method_on_every_family_reports_what_it_left(model_type, case):
    cfg = CASES[case]
    model = tiny_model(model_type)
    n_params = sum(p.numel() for p in model.parameters())
    linear_weights = sum(weight_matrix(m).numel() for m in quantizable_linears(model).values())
    report = compress(model, cfg, calib=random_ids(4, 16) if needs_data(cfg) else None)
    linears = {name: weight_matrix(m) for name, m in quantizable_linears(model).items()}
    zeros = sum(int((W == 0).sum()) for W in linears.values())
    kept_weights = sum(W.numel() for W in linears.values())
    # the report's sparsity is the zeros counted here, over the linears the model had before
    assert report["sparsity_measured"]["overall"] == pytest.approx(1 - (kept_weights - zeros) / linear_weights)
    assert report["params_kept"] == pytest.approx(report["n_params_kept"] / n_params)
    assert report["n_params_kept"] == sum(p.numel() for p in model.parameters()) - zeros
    if cfg.method == "layerdrop":
        assert report["decoder_layers"] == model.config.num_hidden_layers == 1
        assert report["sparsity_measured"]["per_layer"][str(report["dropped_layers"][0])] == 1.0
        assert report["storage_format"] == "dense"
    else:
        target = cfg.nm.sparsity if cfg.nm.structured else cfg.sparsity
        # per row or per group the count is exact; SparseGPT's joint grid may round a few survivors to 0 too
        assert report["sparsity_measured"]["overall"] == pytest.approx(target, abs=0.02 if cfg.bits else 1e-9)
        assert set(report["sparsity_measured"]["per_linear"]) == set(linears)
        if cfg.scope == "row":
            assert all(s == pytest.approx(target, abs=0.03) for s in report["sparsity_measured"]["per_linear"].values())
    assert model.generate(random_ids(1, 4), max_new_tokens=2, do_sample=False).shape == (1, 6)


def test_model_bytes_by_hand_for_bitmask_and_two_four():
    model = tiny_model("llama")  # fp32; 2 blocks of q, o 64×64, k, v 32×64, MLP 3·64·128; the rest dense
    linear = 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128)
    other = sum(p.numel() for p in model.parameters()) - linear
    report = compress(model, PruneConfig(method="magnitude", sparsity=0.5))
    # bitmask: 1 bit per position + 32 bits per survivor = 17 bits per weight at 50%
    assert report["storage_format"] == "bitmask" and report["avg_bits"] == pytest.approx(17.0)
    assert report["model_bytes"] == int(round(linear * 17 / 8 + 4 * other))
    model = tiny_model("llama")
    report = compress(model, PruneConfig(method="magnitude", pattern="2:4"))
    # 2 of every 4 values, each with a 2-bit index: (32 + 2) / 2 = 17 bits per weight
    assert report["storage_format"] == "2:4 packed" and report["avg_bits"] == pytest.approx(17.0)
    model = tiny_model("llama")
    report = compress(model, PruneConfig(method="magnitude", sparsity=0.01))
    assert report["storage_format"] == "dense" and report["avg_bits"] == 32.0  # a bitmask would cost more
    model = tiny_model("llama")
    report = compress(model, PruneConfig(method="sparsegpt", pattern="2:4", bits=4), calib=random_ids(4, 16))
    # 2:4 at 4 bits: (4 + 2) / 2 = 3 bits per weight, plus a 16-bit scale and a 4-bit zero per row
    rows = 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64)  # output rows of every linear
    assert report["avg_bits"] == pytest.approx(3 + rows * 20 / linear)


@pytest.mark.parametrize("cfg,message", [
    (PruneConfig(method="wanda", pattern="5:7"), "model.layers.0.self_attn.q_proj has 64"),
    (PruneConfig(method="layerdrop", n_layers=2), "drop at most 1"),
    (PruneConfig(method="magnitude", sparsity=1.0), "outside [0, 1)"),
    (PruneConfig(method="magnitude", sparsity=-0.1), "outside [0, 1)"),
    (PruneConfig(method="sparsegpt", pattern="2:4", block_size=30), "multiple of the pattern's m"),
    (PruneConfig(method="wanda", bits=4), "joint quantization is a SparseGPT option"),
])
def test_bad_settings_are_one_line_naming_the_fix(cfg, message):
    with pytest.raises(ValueError) as err:
        validate(tiny_model("llama"), cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_calibration_is_required_only_where_used():
    assert not needs_data(PruneConfig(method="magnitude"))
    assert not needs_data(PruneConfig(method="layerdrop", select="last"))
    assert needs_data(PruneConfig(method="layerdrop", select="angular")) and needs_data(PruneConfig(method="wanda"))
    with pytest.raises(ValueError, match="needs calibration token ids"):
        compress(tiny_model("llama"), PruneConfig(method="sparsegpt"))
    assert math.isfinite(compress(tiny_model("llama"), PruneConfig(method="layerdrop"))["avg_bits"])
