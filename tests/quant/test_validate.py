"""validate(): one clear line per bad input, before any expensive work."""

import pytest
from transformers import BertConfig, BertForMaskedLM

from flipbench.compress import QuantConfig, compress, validate
from .tiny_models import tiny_model

BAD = [
    (dict(method="awq"), r"quantization method 'awq' is unknown; use one of none, rtn, gptq, tacq"),
    (dict(method="checkpoint"), r"checkpoint is loaded by the pipeline"),
    (dict(bits=1), r"bits=1 is outside 2-8"),
    (dict(bits=9), r"bits=9 is outside 2-8"),
    (dict(bits=4.0), r"bits=4.0 is outside 2-8; use an integer"),
    (dict(group_size=0), r"group_size=0 is invalid; use -1"),
    (dict(group_size=48), r"group_size=48 does not divide the input width 64 of model\.layers\.0\.self_attn\.q_proj"),
    (dict(group_size=128), r"group_size=128 does not divide the input width 64 of model\.layers\.0\.self_attn\.q_proj"),
    (dict(method="tacq", keep_fraction=0.7), r"keep_fraction=0\.7 is outside \[0, 0\.5\]"),
    (dict(method="tacq", keep_fraction=-0.1), r"keep_fraction=-0\.1 is outside \[0, 0\.5\]"),
    (dict(damp=0.0), r"damp=0\.0 must be positive"),
    (dict(block_size=0), r"block_size=0 must be a positive integer"),
]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.mark.parametrize("cfg, message", BAD)
def test_bad_settings_raise_one_line(llama, cfg, message):
    with pytest.raises(ValueError, match=message) as error:
        validate(llama, QuantConfig(**cfg))
    assert "\n" not in str(error.value)


def test_group_size_that_divides_every_width_passes(llama):
    validate(llama, QuantConfig(method="gptq", bits=3, group_size=32))  # in = 64 and 128


def test_unsupported_architecture_lists_supported_ones():
    config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    bert = BertForMaskedLM(config)
    with pytest.raises(ValueError, match=r"model_type 'bert' is not supported.*gpt2, llama, mistral, opt, phi3, qwen2"):
        validate(bert, QuantConfig(method="rtn"))
    validate(bert, QuantConfig(method="none"))  # nothing to quantize: any model can be its own baseline


def test_gptq_without_calibration_data_raises(llama):
    with pytest.raises(ValueError, match=r"method gptq needs calibration token ids"):
        compress(llama, QuantConfig(method="gptq"))
