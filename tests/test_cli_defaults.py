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


@pytest.mark.parametrize("argv,method,owner", [
    (["compression=rtn", "compression.sparsity=0.7"], "rtn", "magnitude, wanda, sparsegpt"),
    (["compression.keep_fraction=0.01"], "rtn", "tacq"),  # the default method is rtn
    (["+compression.keep_fraction=0.01"], "rtn", "tacq"),  # '+' adds nothing the schema lacks
    (["compression=wanda", "compression.bits=4"], "wanda", "rtn, gptq, tacq, sparsegpt"),
    (["compression=gptq", "compression.n_layers=2"], "gptq", "layerdrop"),
    (["compression=rtn", "compression.replicas=3"], "rtn", "gptq, tacq, wanda, sparsegpt, layerdrop"),
    (["compression=none", "compression.path=/x"], "none", "checkpoint"),
])
def test_another_methods_key_is_refused_by_the_schema_naming_the_methods_that_have_it(argv, method, owner):
    error = cli.precheck(argv)
    key = argv[-1].lstrip("+").split("=")[0]
    assert error == (f"{key} is not a setting of compression={method}; it belongs to {owner} (drop it, or pick one "
                     "of those methods)")


def test_a_sweep_member_with_another_methods_key_is_refused_by_name():
    error = cli.precheck(["-m", "compression=rtn,wanda", "compression.sparsity=0.5"])
    assert error.startswith("sweep member compression=rtn compression.sparsity=0.5: compression.sparsity is not a "
                            "setting of compression=rtn")


@pytest.mark.parametrize("argv", [
    ["compression=tacq", "compression.keep_fraction=0.01", "compression.bits=3"],
    ["compression=sparsegpt", "compression.bits=4", "compression.pattern=2:4"],
])
def test_a_methods_own_keys_pass(argv):
    assert cli.precheck(argv) is None


@pytest.mark.parametrize("argv,n", [
    (["compression=magnitude,wanda", "compression.sparsity=0.7"], 2),
    (["compression=rtn,gptq,tacq", "compression.bits=2"], 3),  # make sweep METHODS=rtn,gptq,tacq BITS=2
])
def test_sweeps_over_shared_keys_compose_every_member(argv, n):
    members = cli.sweep_members(argv)
    assert len(members) == n
    for member in members:
        comp = to_typed(compose(member)).compression
        given = dict(word.split("=") for word in member)
        assert comp.method == given.pop("compression")
        assert {key: str(getattr(comp, key.removeprefix("compression."))) for key in given} == given


@pytest.mark.parametrize("argv,message", [
    (["compression=rtn", "compression.bitz=3"], "unknown config key 'compression.bitz' (did you mean compression.bits"),
    (["compression=wanda", "+compression.sparsty=0.3"], "(did you mean compression.sparsity or compression.pattern?)"),
    (["compression.method=gptq"], "compression.method=gptq does not match compression=rtn; pick the method with "
                                  "compression=gptq"),
    (["compression.method=awq"], "compression.method='awq' is unknown"),
])
def test_a_typo_or_a_method_switched_by_key_is_one_line(argv, message):
    assert message in cli.precheck(argv)


@pytest.mark.parametrize("method", ["none", "rtn", "gptq", "tacq", "magnitude", "wanda", "sparsegpt", "layerdrop",
                                    "checkpoint"])
def test_each_method_file_holds_exactly_its_schema(method):
    """conf/compression/<method>.yaml composes into its method's dataclass, with the dataclass's defaults (which
    --help and the configuration reference show)."""
    from dataclasses import asdict

    from flipbench.config import METHOD_CONFIGS, METHOD_KEYS

    extra = ["compression.path=/x"] if method == "checkpoint" else []
    comp = to_typed(compose([f"compression={method}", *extra])).compression
    assert type(comp) is METHOD_CONFIGS[method]
    assert asdict(comp) == {**asdict(METHOD_CONFIGS[method]()), **({"path": "/x"} if extra else {})}
    assert set(asdict(comp)) == {"method", *METHOD_KEYS[method]}


def test_text_calibration_leaves_tacq_gradients_on_the_task():
    cal = to_typed(compose(["compression=tacq", "calibration=text", "calibration.path=calib.txt"])).calibration
    assert (cal.source, cal.gradient_source) == ("text", "task")


def test_help_lists_every_schema_key_with_its_type_default_and_meaning():
    from flipbench import help
    from flipbench.config import schema_keys

    rows = {key: (kind, default, meaning) for key, kind, default, meaning in help.rows()}
    per_method = help.method_rows()
    every = set(rows) | {key for entries in per_method.values() for key, *_ in entries}
    assert every == set(schema_keys()) - {"compression.method"}
    # compression keys per method, with that method's default and the meaning its mixin gives
    tacq = {key: (kind, default, meaning) for key, kind, default, meaning in per_method["tacq"]}
    assert tacq["compression.bits"][:2] == ("int", "3") and tacq["compression.keep_fraction"][1] == "0.0035"
    assert "compression.sparsity" not in tacq and per_method["none"] == []
    assert dict((k, d) for k, _, d, _ in per_method["sparsegpt"])["compression.bits"] == "None"
    assert tacq["compression.damp"][2] == "fraction of mean(diag H) added to H's diagonal"
    assert "compression=wanda: Wanda" in help.text()
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
