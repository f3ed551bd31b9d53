"""Models placed by accelerate (device_map over the CPU and disk offload) evaluate and quantize exactly as the
plain load; the onload wrapper puts every tensor back; TACQ's gradients run in fp32 with a CPU accumulator."""

import copy
import hashlib

import pandas as pd
import pytest
import torch

from flipbench import models, pipeline
from flipbench.compress import QuantConfig, compress
from flipbench.compress.families import quantizable_linears
from flipbench.compress.gradients import gradient_magnitudes
from flipbench.compress.placement import offload_source, onload
from flipbench.config import ConfigError, ModelConfig
from tests.conftest import compose

# layer 0 and everything outside the layers stay on the CPU; layer 1 is offloaded to disk
SPLIT = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
         "model.rotary_emb": "cpu", "lm_head": "cpu"}
# the other way round: embeddings, first block, final norm and head on disk (inputs captured from disk)
SPLIT_OUTSIDE = {"model.embed_tokens": "disk", "model.layers.0": "disk", "model.layers.1": "cpu", "model.norm": "disk",
                 "model.rotary_emb": "cpu", "lm_head": "disk"}


def _load(path, **placement):
    return models.load_model(ModelConfig(path=str(path), dtype="float32", device="cpu", **placement))[0]


def _weight(model, name: str) -> torch.Tensor:
    """A parameter's value, read from its offload storage when it is offloaded."""
    tensor = model.get_parameter(name)
    if tensor.is_meta:
        weights_map, key = offload_source(model, name)
        return weights_map[key]
    return tensor.detach()


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def split_model(random_llama, tmp_path):
    return _load(random_llama, device_map=SPLIT, offload_folder=str(tmp_path / "offload"))


def test_split_map_offloads_layer_one(split_model):
    assert split_model.model.layers[1].mlp.down_proj.weight.is_meta
    assert not split_model.model.layers[0].mlp.down_proj.weight.is_meta


def test_onload_puts_everything_back(split_model):
    layer = split_model.model.layers[1]
    hook = layer.mlp.down_proj._hf_hook
    before = _weight(split_model, "model.layers.1.mlp.down_proj.weight").clone()
    with onload(layer, "cpu", dtype=torch.bfloat16, write_back=False):
        W = layer.mlp.down_proj.weight
        assert not W.is_meta and W.dtype == torch.bfloat16 and hook.offload is False
        W.data.zero_()
    assert layer.mlp.down_proj.weight.is_meta and hook.offload is True and str(hook.execution_device) == "cpu"
    assert torch.equal(_weight(split_model, "model.layers.1.mlp.down_proj.weight"), before)  # read-only pass
    with onload(layer, "cpu"):
        layer.mlp.down_proj.weight.data.mul_(2)
    assert layer.mlp.down_proj.weight.is_meta
    assert torch.equal(_weight(split_model, "model.layers.1.mlp.down_proj.weight"), 2 * before)  # written back


def test_onload_of_a_resident_module_keeps_its_tensors():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    weight = model[0].weight
    data = weight.data
    with onload(model, "cpu", dtype=torch.float64, write_back=False):
        assert model[0].weight is weight and weight.dtype == torch.float64
    assert weight.data.data_ptr() == data.data_ptr() and weight.dtype == torch.float32


@pytest.mark.parametrize("method,device_map", [("gptq", SPLIT), ("tacq", SPLIT), ("gptq", SPLIT_OUTSIDE)],
                         ids=["gptq", "tacq", "gptq-embeddings-on-disk"])
def test_quantizing_an_offloaded_model_gives_the_plain_load_weights(random_llama, tmp_path, method, device_map):
    source = random_llama / "model.safetensors"
    before = _sha(source)
    plain = _load(random_llama)
    split = _load(random_llama, device_map=device_map, offload_folder=str(tmp_path / "offload"))
    calib = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    cfg = QuantConfig(method=method, bits=3, keep_fraction=0.01)
    report_plain = compress(plain, cfg, calib=calib, device="cpu")
    report_split = compress(split, cfg, calib=calib, device="cpu")
    assert report_split["n_kept"] == report_plain["n_kept"]
    for name in quantizable_linears(plain):
        torch.testing.assert_close(_weight(split, f"{name}.weight"), _weight(plain, f"{name}.weight"), rtol=0, atol=1e-6)
    offloaded = [name for name, param in split.named_parameters() if param.is_meta]
    on_disk = [key for key, device in device_map.items() if device == "disk"]
    assert offloaded and all(any(name.startswith(key + ".") for key in on_disk) for name in offloaded)
    assert _sha(source) == before  # the quantized weights went to the offload folder, not into the checkpoint
    ids = calib[:1]
    torch.testing.assert_close(split(ids).logits, plain(ids).logits, rtol=0, atol=1e-5)


def test_tacq_gradients_run_in_fp32_with_a_cpu_accumulator(random_llama):
    bf16 = _load(random_llama).to(torch.bfloat16)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    G = gradient_magnitudes(bf16, ids, "cpu")  # default: fp32
    # the same weights, widened to fp32 exactly, through a plain fp32 model and a whole-model backward
    G32 = gradient_magnitudes(copy.deepcopy(bf16).float(), ids, "cpu", checkpointing=False)
    G16 = gradient_magnitudes(bf16, ids, "cpu", dtype=torch.bfloat16)
    for name, g in G.items():
        assert g.device.type == "cpu" and g.dtype == torch.float32
        torch.testing.assert_close(g, G32[name], rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(G16[name], G[name], rtol=1e-3, atol=0) for name in G)
    assert all(p.dtype == torch.bfloat16 and p.grad is None for p in bf16.parameters())


SPLIT_OVERRIDE = f"model.device_map={{{','.join(f'{k}:{v}' for k, v in SPLIT.items())}}}"


def _same_samples(placed: pd.DataFrame, plain: pd.DataFrame) -> None:
    for side in ("base", "comp"):
        assert placed[f"pred_{side}"].tolist() == plain[f"pred_{side}"].tolist()
        assert placed[f"correct_{side}"].tolist() == plain[f"correct_{side}"].tolist()
    mc = plain["output_type"] == "multiple_choice"
    for column in ("p_base", "p_comp"):
        for a, b in zip(placed.loc[mc, column], plain.loc[mc, column]):
            assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_offloaded_model_evaluates_and_quantizes_like_the_plain_load(mini_run_overrides, tmp_path):
    common = mini_run_overrides + ["suite.tasks=[mini_mc]", "suite.limit=6", "compression=rtn", "eval.cache=false",
                                   "eval.bootstrap=0", "output.plots=false"]
    plain = pd.read_parquet(pipeline.run(compose(common)) / "samples.parquet")
    placed = pipeline.run(compose(common + [SPLIT_OVERRIDE, f"model.offload_folder={tmp_path / 'offload'}"]))
    _same_samples(pd.read_parquet(placed / "samples.parquet"), plain)


@pytest.mark.slow
@pytest.mark.parametrize("placement", [["model.device_map=cpu"], [SPLIT_OVERRIDE]], ids=["cpu", "cpu+disk"])
def test_placed_model_evaluates_and_gptq_quantizes_like_the_plain_load(mini_run_overrides, tmp_path, placement):
    common = mini_run_overrides + ["compression=gptq", "calibration.n_samples=4", "calibration.seq_len=32",
                                   "eval.cache=false", "eval.bootstrap=0", "output.plots=false"]
    plain = pd.read_parquet(pipeline.run(compose(common)) / "samples.parquet")
    offload = [f"model.offload_folder={tmp_path / 'offload'}"] if "disk" in placement[0] else []
    _same_samples(pd.read_parquet(pipeline.run(compose(common + placement + offload)) / "samples.parquet"), plain)


@pytest.mark.parametrize("placement,message", [
    (dict(device_map="everywhere"), "device_map='everywhere' is unknown"),
    (dict(device_map={"model": "tpu", "lm_head": "cpu"}), "'tpu' is not a device name"),
    (dict(device_map={"model": "cuda:3", "lm_head": "cpu"}), "GPU 3 does not exist"),
    (dict(device_map={"model": "cpu", "head": "cpu"}), "modules the model does not have: head"),
    (dict(device_map={"model": "cpu"}), "no device for lm_head.weight"),
    (dict(device_map={"model": "disk", "lm_head": "cpu"}), "set model.offload_folder"),
    (dict(device_map="auto", max_memory={"cpu": "10KB"}), "does not fit in model.max_memory"),
    (dict(device_map="auto", max_memory={"cpu": "lots"}), "is not a size"),
    (dict(max_memory={"cpu": "1GB"}), "need model.device_map"),
])
def test_bad_placement_is_one_line_with_the_fix(random_llama, placement, message):
    from transformers import AutoConfig

    with pytest.raises(ConfigError, match=message) as err:
        models.check_placement(ModelConfig(path=str(random_llama), **placement), AutoConfig.from_pretrained(random_llama))
    assert "\n" not in str(err.value)


def test_bad_placement_stops_the_run_before_any_weight_or_folder(mini_run_overrides, tmp_path):
    with pytest.raises(ConfigError, match="set model.offload_folder"):
        pipeline.run(compose(mini_run_overrides + ["model.device_map={model:disk,lm_head:cpu}"]))
    assert not (tmp_path / "results" / "runs").exists()
