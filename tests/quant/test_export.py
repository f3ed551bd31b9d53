"""output.save_model: the saved model, reloaded by transformers, gives the in-process fake-quantized model's
log-likelihoods (packed RTN/GPTQ through compressed-tensors; TACQ dense with its mask sidecar)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from flipbench.compress import QuantConfig, compress
from flipbench.compress.export import save


def _logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits.float(), dim=-1)


@pytest.mark.parametrize("settings", [
    dict(method="rtn", bits=4, group_size=-1),
    dict(method="rtn", bits=3, group_size=32),
    dict(method="rtn", bits=2, group_size=32, sym=True),
    dict(method="gptq", bits=4, group_size=32, act_order=True, static_groups=True),
    dict(method="gptq", bits=8, group_size=-1),
    dict(method="tacq", bits=3, group_size=-1, keep_fraction=0.01),
])
def test_saved_model_round_trip(random_llama, tmp_path, settings):
    from compressed_tensors.compressors import unpack_from_int32  # noqa: F401  (the extra is installed)
    from transformers import CompressedTensorsConfig

    model = AutoModelForCausalLM.from_pretrained(random_llama, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(random_llama)
    generator = torch.Generator().manual_seed(0)
    calib = torch.randint(0, model.config.vocab_size, (8, 32), generator=generator)
    cfg = QuantConfig(**settings)
    grids = {}
    compress(model, cfg, calib=calib, grids=grids)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=generator)
    expected = _logprobs(model, ids)
    details = save(model, tokenizer, grids, cfg, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    if cfg.method == "tacq":
        from safetensors.torch import load_file

        assert "quantization_config" not in config
        masks = load_file(tmp_path / "model" / "tacq_mask.safetensors")
        assert set(masks) == set(grids) and int(sum(m.sum() for m in masks.values())) == details["n_kept"] > 0
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    else:
        quant = config["quantization_config"]
        assert quant["quant_method"] == "compressed-tensors" and quant["format"] == "pack-quantized"
        assert quant["config_groups"]["group_0"]["weights"]["num_bits"] == cfg.bits
        from safetensors import safe_open

        with safe_open(tmp_path / "model" / "model.safetensors", "pt") as f:
            name = sorted(grids)[0]
            packed = f.get_slice(f"{name}.weight_packed")
            rows, cols = grids[name]["scale"].shape[0], len(grids[name]["g_idx"])
            n_ints = packed.get_shape()[0] * packed.get_shape()[1]
            # real low-bit storage: each row's codes packed bit by bit into int32 words
            assert packed.get_dtype() == "I32" and rows * cols * cfg.bits <= 32 * n_ints < rows * (cols * cfg.bits + 32)
        # CPU has no low-bit kernel here: transformers de-quantizes the packed codes on load.
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model",
                                                        quantization_config=CompressedTensorsConfig(dequantize=True))
    assert torch.allclose(_logprobs(reloaded, ids), expected, atol=1e-5, rtol=0)


def test_act_order_with_dynamic_groups_is_refused():
    from flipbench.compress.export import packable

    assert "static_groups=true" in packable(QuantConfig(method="gptq", bits=4, group_size=32, act_order=True))
    assert packable(QuantConfig(method="gptq", bits=4, group_size=-1, act_order=True)) is None
