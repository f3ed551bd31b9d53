"""An MoE expert that no calibration token reaches is pruned by magnitude alone, and the report says which, for
Wanda as for SparseGPT (issue 23, case 9: Wanda used to fall back silently)."""

import pytest
import torch

from flipbench.compress import PruneConfig, compress
from flipbench.compress.families import decoder_layers, quantizable_linears, weight_matrix
from flipbench.compress.prune.masks import Pattern, mask_for
from tests.quant.test_families import CALIB, _never_route_to
from tests.quant.tiny_models import tiny_model


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_unreached_experts_are_pruned_by_magnitude_and_reported(method):
    model = tiny_model("mixtral")
    for block in decoder_layers(model):
        block.mlp.gate.register_forward_hook(_never_route_to(3))
    original = {name: weight_matrix(w).clone() for name, w in quantizable_linears(model).items()}
    report = compress(model, PruneConfig(method=method, sparsity=0.5), calib=CALIB)
    unreached = {f"model.layers.{i}.mlp.experts.3.{p}" for i in range(2) for p in ("gate_up_proj", "down_proj")}
    assert set(report["unreached_magnitude"]) == unreached and report["n_unreached_magnitude"] == 4
    for name in unreached:  # the magnitude mask within each row, nothing else
        W = original[name]
        expected = W.masked_fill(mask_for(W.abs(), 0.5, Pattern()), 0)
        assert torch.equal(weight_matrix(quantizable_linears(model)[name]), expected), name
