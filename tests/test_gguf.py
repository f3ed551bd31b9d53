"""GGUF in: a GGUF file written here with the gguf package loads through flipbench as a plain float model with
the source model's logits; a missing file or an architecture transformers cannot read is refused in preflight."""

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from flipbench import models, pipeline
from flipbench.config import ConfigError, ModelConfig
from tests.conftest import compose
from tests.gguf_files import metadata_only_gguf, tiny_llama_ggufs


@pytest.fixture(scope="session")
def ggufs(tmp_path_factory):
    return tiny_llama_ggufs(tmp_path_factory.mktemp("gguf"))


def _logits(model, tokenizer, text="Question: what colour is thing 12? Answer: red"):
    return model(tokenizer(text, return_tensors="pt").input_ids).logits


@pytest.mark.parametrize("f16", [False, True], ids=["F32", "F16"])
def test_gguf_loads_as_a_plain_float_model_with_the_source_logits(ggufs, f16):
    source_dir, f32, f16_file = ggufs
    file = f16_file if f16 else f32
    model, tokenizer = models.load_model(ModelConfig(path=str(file), gguf_file=str(file), dtype="float32", device="cpu"))
    assert model.hf_quantizer is None and not hasattr(model.config, "quantization_config")
    source = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32)
    if f16:  # the matrices went through fp16: the source with its matrices rounded the same way
        for param in source.parameters():
            if param.ndim == 2:
                param.data = param.data.half().float()
    torch.testing.assert_close(_logits(model, tokenizer), _logits(source, tokenizer), rtol=0, atol=1e-5)


def test_f32_gguf_against_its_f16_copy_through_the_pipeline(ggufs, mini_tasks, tmp_path):
    _, f32, f16 = ggufs
    run = pipeline.run(compose([
        "model=gguf", f"model.gguf_file={f32}", "compression=checkpoint", f"compression.gguf_file={f16}",
        f"suite.include_path={mini_tasks}", "suite.tasks=[mini_mc]", "suite.limit=6", f"output.root={tmp_path}",
        "eval.bootstrap=0", "output.plots=false", "eval.batch_size=4"]))
    samples = pd.read_parquet(run / "samples.parquet")
    assert len(samples) == 6 and samples["kl"].max() < 1e-4  # fp16 rounding moves the choice distributions a hair
    assert (samples["kl"] > 0).any()  # ...but it does move them: the two files really were loaded


@pytest.mark.parametrize("name,message", [
    ("missing.gguf", "does not exist"),
    ("rwkv.gguf", "architecture 'rwkv6', which transformers cannot load"),
    ("text.gguf", "not a readable GGUF file"),
])
def test_bad_gguf_fails_in_preflight_with_one_line(tmp_path, mini_tasks, name, message):
    metadata_only_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    (tmp_path / "text.gguf").write_text("not a gguf file\n")
    with pytest.raises(ConfigError, match=message) as err:
        pipeline.run(compose(["model=gguf", f"model.gguf_file={tmp_path / name}", f"suite.include_path={mini_tasks}",
                              "suite.tasks=[mini_mc]", f"output.root={tmp_path / 'results'}"]))
    assert "\n" not in str(err.value) and not (tmp_path / "results").exists()
