"""Each pruning method through the real pipeline on the bundled model (mini tasks, one shared baseline), and
bad pruning input rejected in one line with exit 2 before anything is evaluated."""

import json

import pandas as pd
import pytest

from flipbench import pipeline
from flipbench.config import ConfigError
from tests.conftest import compose
from tests.test_end_to_end import check_contract, run_cli

METHODS = [  # the first runs by default; the others are marked slow (each ~5 s idle, much more on a busy machine)
    ("wanda", ["compression.pattern=2:4"], 0.5),
    pytest.param("magnitude", ["compression.sparsity=0.3"], 0.3, marks=pytest.mark.slow),
    pytest.param("sparsegpt", ["compression.pattern=4:8", "compression.bits=4"], 0.5, marks=pytest.mark.slow),
    pytest.param("layerdrop", ["compression.select=angular"], 0.25, marks=pytest.mark.slow),  # 1 of 4 blocks
]


@pytest.fixture(scope="module")
def bundled_overrides(mini_tasks, tmp_path_factory) -> list[str]:
    """Shared by every test here, so the bundled model's baseline on the mini tasks is evaluated once."""
    root = tmp_path_factory.mktemp("prune_e2e")
    return ["model=tiny", f"suite.include_path={mini_tasks}", "suite.tasks=[mini_mc,mini_gen]",
            f"output.root={root / 'results'}", "eval.batch_size=4", "eval.bootstrap=0",
            "calibration.n_samples=8", "calibration.seq_len=64"]


def contract_without_plots(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    return pd.read_parquet(run_dir / "samples.parquet"), pd.read_csv(run_dir / "summary.csv"), manifest


@pytest.mark.parametrize("method,extra,sparsity", METHODS)
def test_pruner_end_to_end_on_the_bundled_model(bundled_overrides, method, extra, sparsity):
    plots = [] if method == "wanda" else ["output.plots=false"]  # the contract's plots, checked once
    run_dir = pipeline.run(compose(bundled_overrides + [f"compression={method}", *extra, *plots]))
    samples, summary, manifest = check_contract(run_dir) if not plots else contract_without_plots(run_dir)
    details = manifest["compression"]
    assert details["method"] == method
    assert details["sparsity_measured"]["overall"] == pytest.approx(sparsity, abs=0.01)
    assert (summary["sparsity"] == details["sparsity_measured"]["overall"]).all()
    assert (summary["params_kept"] == details["params_kept"]).all() and details["params_kept"] < 1
    assert summary["avg_bits"].iloc[0] == pytest.approx(details["avg_bits"])
    if method == "layerdrop":
        assert details["dropped_layers"] and details["decoder_layers"] == 3
        assert (samples["pred_comp"] != samples["pred_base"]).any()  # dropping a block changes answers


@pytest.mark.parametrize("extra,message", [
    (["compression=wanda", "compression.sparsity=1.0"], "compression.sparsity=1.0 is outside [0, 1)"),
    (["compression=magnitude", "compression.pattern=3:7"], "model.layers.0.self_attn.q_proj has 128"),
    (["compression=layerdrop", "compression.n_layers=4"], "n_layers=4 leaves no decoder layer of the model's 4"),
])
def test_bad_pruning_input_fails_before_evaluation(bundled_overrides, extra, message, monkeypatch):
    monkeypatch.setattr(pipeline, "evaluate_side", lambda *a, **k: pytest.fail("evaluated"))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        pipeline.run(compose(bundled_overrides + extra))


@pytest.mark.slow  # a subprocess: the in-process checks above cover the message, tests/test_end_to_end the exit code
def test_cli_rejects_an_nm_pattern_that_does_not_divide_a_layer(bundled_overrides, tmp_path):
    done = run_cli(*bundled_overrides, "compression=sparsegpt", "compression.pattern=3:7", "compression.block_size=7",
                   cwd=tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("flipbench: error")]
    assert len(errors) == 1 and "pattern=3:7 needs an input width divisible by 7" in errors[0], done.stderr[-2000:]
    assert "Running loglikelihood" not in done.stderr  # rejected before any evaluation
