"""validate(): one clear line per bad input, before any expensive work."""

from types import SimpleNamespace

import pytest
from torch import nn

from flipbench.compress import QuantConfig, compress, validate
from .tiny_models import tiny_model

BAD = [
    (dict(method="awq"), r"quantization method 'awq' is unknown; use one of none, rtn, gptq, tacq"),
    (dict(method="checkpoint"), r"checkpoint is loaded by the pipeline"),
    (dict(bits=1), r"bits=1 is outside 2-8"),
    (dict(bits=9), r"bits=9 is outside 2-8"),
    (dict(bits=4.0), r"bits=4.0 is outside 2-8; use an integer"),
    (dict(group_size=0), r"group_size=0 is invalid; use -1"),
    (dict(mse=True, mse_norm=0.0), r"mse_norm=0\.0 must be positive"),
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


@pytest.mark.parametrize("group_size", [32, 48, 128])
def test_any_group_size_passes(llama, group_size):
    # 48 does not divide 64 or 128 and 128 exceeds 64: the last group of a row is narrower (ragged groups)
    validate(llama, QuantConfig(method="gptq", bits=3, group_size=group_size))


class NoBlocks(nn.Module):
    """A model with linears but no list of blocks to find."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="blockless")
        self.proj = nn.Linear(8, 8)


def test_model_without_blocks_raises_one_line_naming_the_fix():
    with pytest.raises(ValueError, match=r"no decoder blocks found in NoBlocks \(model_type 'blockless'\).*BLOCKS_PATH") as error:
        validate(NoBlocks(), QuantConfig(method="rtn"))
    assert "\n" not in str(error.value)
    validate(NoBlocks(), QuantConfig(method="none"))  # nothing to quantize: any model can be its own baseline


def test_gptq_without_calibration_data_raises(llama):
    with pytest.raises(ValueError, match=r"method gptq needs calibration token ids"):
        compress(llama, QuantConfig(method="gptq"))
