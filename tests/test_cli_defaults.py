"""Configuration you can guess: the CLI's defaults and refusals agree with make's."""

from __future__ import annotations

import pytest

from flipbench import cli
from flipbench.config import to_typed
from tests.conftest import compose


@pytest.mark.parametrize("argv,suite", [
    (["model=hf", "model.path=org/name"], "standard"),
    (["model.path=/some/dir"], "standard"),
    (["model=gguf", "model.gguf_file=x.gguf"], "standard"),
    (["model=hf", "model.path=org/name", "suite=tiny"], "tiny"),
    ([], None),  # the bundled model keeps its synthetic suite
    (["model.path=bundled:tiny"], None),
])
def test_a_model_of_your_own_runs_the_standard_suite_as_make_does(argv, suite):
    out = cli.default_suite(argv)
    added = [a for a in out if a.startswith("suite=")]
    assert (added[-1].split("=")[1] if added else None) == suite


@pytest.mark.parametrize("argv,owner", [
    (["compression=rtn", "compression.sparsity=0.7"], "magnitude, wanda, sparsegpt"),
    (["compression.keep_fraction=0.01"], "tacq"),  # the default method is rtn
    (["compression=wanda", "compression.bits=4"], "rtn, gptq, tacq, sparsegpt"),
    (["compression=gptq", "compression.n_layers=2"], "layerdrop"),
])
def test_another_methods_key_is_refused_naming_the_methods_that_read_it(argv, owner):
    error = cli.check_method_keys(argv)
    assert error and error.endswith("(drop it, or pick one of those methods)") and f"belongs to {owner}" in error


@pytest.mark.parametrize("argv", [
    ["compression=tacq", "compression.keep_fraction=0.01", "compression.bits=3"],
    ["compression=sparsegpt", "compression.bits=4", "compression.pattern=2:4"],
    ["-m", "compression=rtn,wanda", "compression.sparsity=0.5"],  # a sweep crosses every method with every key
    ["compression=rtn", "compression.bitz=3"],  # unknown keys are the schema check's (with a suggestion)
])
def test_a_methods_own_keys_pass(argv):
    assert cli.check_method_keys(argv) is None


def test_text_calibration_leaves_tacq_gradients_on_the_task():
    cal = to_typed(compose(["compression=tacq", "calibration=text", "calibration.path=calib.txt"])).calibration
    assert (cal.source, cal.gradient_source) == ("text", "task")


def test_help_lists_every_schema_key_with_its_type_default_and_meaning():
    from flipbench import help
    from flipbench.config import schema_keys

    rows = {key: (kind, default, meaning) for key, kind, default, meaning in help.rows()}
    assert set(rows) == set(schema_keys())
    assert rows["eval.batch_size"] == ("int", "16", "lm-eval batch size, the same on both sides")
    assert rows["engine.name"][1] == "'hf'" and "vllm" in rows["engine.name"][2]
    # the comment block above a field is its meaning when its own line has none
    assert rows["model.device_map"][2].startswith("Placement by accelerate")
    documented = {key for key, (_, _, meaning) in rows.items() if meaning}
    assert len(documented) >= len(rows) - 7, sorted(set(rows) - documented)
    assert "collect side=baseline|compressed" in help.text()


@pytest.mark.parametrize("argv", [
    ["suite.task_limits={synth_arc: 4}"],          # a whole mapping, no '+' or '++'
    ["suite.task_limits.synth_arc=4"],             # one new entry, no '+'
    ["+suite.num_fewshot.synth_arc=2"],            # the old '+' form still works
    ["model.max_memory={cpu: 2GiB}"],
])
def test_mapping_keys_need_no_plus(argv):
    assert cli.precheck(cli.force_mapping_overrides(argv)) is None


def test_mapping_overrides_become_forced_and_others_stay():
    out = cli.force_mapping_overrides(["suite.task_limits.a=1", "+gate.per_task.a.max_flips=0.1", "eval.seed=3",
                                       "~suite.metrics"])
    assert out == ["++suite.task_limits.a=1", "++gate.per_task.a.max_flips=0.1", "eval.seed=3", "~suite.metrics"]
