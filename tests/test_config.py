"""Every config file composes into the typed schema; bad keys and values fail before any model loads."""

import subprocess
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from flipbench.config import ConfigError, FlipbenchConfig, to_typed
from tests.conftest import CONF_DIR, compose

# search_space/ belongs to the search config (conf/search.yaml), composed by its own tests
GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in Path(CONF_DIR).iterdir()
          if g.is_dir() and g.name != "search_space"}
REQUIRED = {"model": {"hf": ["model.path=org/name"], "gguf": ["model.gguf_file=some.gguf"]}, "compression": {"checkpoint": ["compression.path=some/dir"]},
            "calibration": {"text": ["calibration.path=calib.txt"]},
            "engine": {"server": ["engine.base_url=http://127.0.0.1:9/v1/completions"]}}
CASES = [(group, option) for group, options in GROUPS.items() for option in options]


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_config_file_composes_and_validates(group, option):
    extra = REQUIRED.get(group, {}).get(option, [])
    typed = to_typed(compose([f"{group}={option}", *extra]))
    assert isinstance(typed, FlipbenchConfig)


def test_defaults_are_the_bundled_model_and_suite():
    typed = to_typed(compose([]))
    assert typed.model.path == "bundled:tiny" and typed.suite.tasks == ["synth"]


def test_tacq_fits_its_grids_as_the_official_code():
    # asymmetric, per output channel, MSE search with the reference norm 2.4; squared error stays an option
    comp = to_typed(compose(["compression=tacq"])).compression
    assert (comp.sym, comp.group_size, comp.mse, comp.mse_norm) == (False, -1, True, 2.4)
    assert to_typed(compose(["compression=tacq", "compression.mse_norm=2"])).compression.mse_norm == 2.0


def test_unknown_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException):
        compose(["compression.bitz=3"])


def test_wrong_type_fails_at_composition():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose(["compression.bits=three"])


@pytest.mark.parametrize("override,message", [
    ("compression.bits=9", "outside 2-8"),
    ("compression.bits=1", "outside 2-8"),
    ("compression=tacq compression.keep_fraction=0.6", "outside \\[0, 0.5\\]"),
    ("compression.group_size=0", "group_size=0"),
    ("compression.mse_norm=0", "mse_norm=0"),
    ("compression.method=awq", "unknown"),
    ("eval.batch_size=0", "batch_size"),
    ("suite.tasks=[]", "suite.tasks is empty"),
    ("eval.noise_floor=true", "eval.noise_floor='True' is unknown"),  # the old boolean switch names no perturbation
    ("eval.noise_dtype=int8", "eval.noise_dtype='int8' is unknown"),
    ("eval.token_kl_topk=-1", "eval.token_kl_topk=-1 must be >= 0"),
    ("gate.on=median", "gate.on='median' is unknown"),
])
def test_bad_values_fail_validation_with_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        to_typed(compose(override.split()))
    assert "\n" not in str(err.value)


def test_data_files_take_new_task_keys_without_plus():
    typed = to_typed(compose(["suite=standard", "suite.data_files.gsm8k=/data/gsm8k_test.jsonl"]))
    assert typed.suite.data_files == {"gsm8k": "/data/gsm8k_test.jsonl"}


def make_dry_run(*variables: str) -> str:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["make", "-n", "-W", ".venv/.installed", "eval", *variables], cwd=root, capture_output=True,
                         text=True, check=True).stdout
    return next(line for line in out.splitlines() if "bin/flipbench" in line)


def test_make_variables_map_onto_overrides():
    line = make_dry_run("MODEL=org/model", "METHOD=gptq", "BITS=3", "TASKS=mmlu,gsm8k", "LIMIT=20", "ARGS=eval.seed=7")
    for part in ("model=hf", "model.path=org/model", "compression=gptq", "compression.bits=3",
                 "'suite.tasks=[mmlu,gsm8k]'", "suite.limit=20", "eval.seed=7"):
        assert part in line
    import shlex

    from flipbench.cli import default_suite

    assert "suite=standard" in default_suite(shlex.split(line)[1:])  # the CLI picks the standard suite, as for make


def test_make_without_model_keeps_the_bundled_defaults():
    line = make_dry_run()
    assert "model=" not in line and "suite=" not in line


@pytest.mark.parametrize("overrides,tag", [
    (["compression=rtn", "compression.bits=3"], "rtn-w3"),
    (["compression=none"], "none"),
    (["compression=wanda", "compression.pattern=2:4"], "wanda-2_4"),
    (["compression=sparsegpt", "compression.bits=4"], "sparsegpt-s0.5-w4"),
    (["compression=layerdrop", "compression.n_layers=2"], "layerdrop-n2"),
])
def test_sweep_member_folders_are_tagged_from_the_methods_own_keys(overrides, tag):
    from omegaconf import OmegaConf

    subdir = OmegaConf.load(Path(CONF_DIR) / "config.yaml").hydra.sweep._get_node("subdir")._value()
    number, expression = subdir.split("-", 1)
    assert number == "${hydra.job.num}"
    assert OmegaConf.create({"tag": expression, "compression": compose(overrides).compression}).tag == tag


def test_a_config_saved_with_every_methods_keys_loads_as_its_methods_config():
    """config.yaml of runs (and artifacts) saved while one flat compression config held every method's keys: the
    keys the method lacks were unread defaults and are dropped; its own keys keep their saved values."""
    from omegaconf import OmegaConf

    from flipbench.config import GptqConfig, from_saved

    flat = {"method": "gptq", "bits": 3, "act_order": True, "keep_fraction": 0.0035, "sparsity": 0.5, "n_layers": 1,
            "path": None, "scope": "row", "replicas": 2}
    typed = to_typed(OmegaConf.to_object(from_saved({"model": {"path": "org/name"}, "compression": flat})))
    assert typed.compression == GptqConfig(bits=3, act_order=True, replicas=2)
    assert typed.model.path == "org/name" and typed.suite.tasks == ["synth"]  # the rest from the schema's defaults
