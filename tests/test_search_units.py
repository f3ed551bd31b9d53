"""Budget search, the parts that need no model: the space, budget units, rungs, the limit check, the front."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from flipbench.config import ConfigError, GateConfig
from flipbench.gate import MISSING_VIOLATION
from flipbench.search import outputs, settings, space, study
from tests.conftest import CONF_DIR


def test_grid_labels_and_overrides():
    points = space.grid({"rtn": {"bits": [2, 4], "group_size": [-1, 32]}, "tacq": {"keep_fraction": [0.01]}})
    assert len(points) == 5
    assert points[1].label == "rtn-w2-g32"
    assert points[1].overrides == ["compression=rtn", "compression.bits=2", "compression.group_size=32"]
    assert points[4].overrides == ["compression=tacq", "compression.keep_fraction=0.01"]
    gptq = space.grid({"gptq": {"act_order": [True]}})[0]
    assert gptq.overrides == ["compression=gptq", "compression.act_order=true"] and gptq.label == "gptq-aotrue"


@pytest.mark.parametrize("bad, words", [
    ({"awq": {"bits": [4]}}, "search.space.awq: unknown method"),
    ({"rtn": {"keep_fraction": [0.1]}}, "search.space.rtn.keep_fraction is not searchable"),
    ({"rtn": {"bits": ["four"]}}, "search.space.rtn.bits has value 'four'"),
    ({"rtn": {"bits": []}}, "search.space.rtn.bits is empty"),
    ({}, "search.space is empty"),
])
def test_bad_space(bad, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        space.check_space(bad)


def test_register_adds_a_method():
    space.register("unit_test_prune", sparsity=float, pattern=str)
    try:
        space.check_space({"unit_test_prune": {"sparsity": [0.5], "pattern": ["2:4"]}})
        point = space.grid({"unit_test_prune": {"sparsity": [0.5], "pattern": ["2:4"]}})[0]
        assert point.overrides == ["compression=unit_test_prune", "compression.sparsity=0.5", "compression.pattern=2:4"]
    finally:
        del space.SEARCHABLE["unit_test_prune"]


@pytest.mark.parametrize("text, expected", [("3GB", 3 * 10**9), ("2.5GiB", int(2.5 * 2**30)), ("800 MB", 8 * 10**8),
                                            ("512mib", 512 * 2**20), (None, None)])
def test_sizes(text, expected):
    assert settings.parse_size(text) == expected


@pytest.mark.parametrize("text, words", [("3", "has no unit; write 3GB"), ("3 bits", "unknown unit"), ("big", "not a size")])
def test_bad_sizes(text, words):
    with pytest.raises(ConfigError, match=words):
        settings.parse_size(text)


def test_bits():
    assert settings.parse_bits("3.5") == 3.5 and settings.parse_bits("4bits") == 4.0 and settings.parse_bits(None) is None
    with pytest.raises(ConfigError, match="not a bit width"):
        settings.parse_bits("4GB")


@pytest.mark.parametrize("full, fraction, eta, shares", [
    (200, 0.25, 4, [0.25, 1.0]), (200, 0.25, 2, [0.25, 0.5, 1.0]), (12, 0.5, 2, [0.5, 1.0]), (10, 1.0, 4, [1.0]),
    # 3 docs: 10% and 20% both give 1 doc (one rung), 40% 2 docs, 80% all 3 (full fidelity)
    (3, 0.1, 2, [0.1, 0.4, 1.0])])
def test_fidelities(full, fraction, eta, shares):
    assert space.fidelities(full, fraction, eta) == shares


def _rows(**columns):
    base = {"task": ["a", "b"], "group": "all", "metric": "acc", "headline": True, "n": 100, "n_nonfinite": 0,
            "kl_scope": "choice", "flips": [0.10, 0.30], "flips_ci_high": [0.20, 0.45], "lost": [0.05, 0.2],
            "delta_acc": [-0.01, -0.05], "delta_acc_ci_low": [-0.04, -0.12], "kl_mean": [0.1, 0.2],
            "kl_mean_ci_high": [0.15, 0.3]}
    return pd.DataFrame(base | columns)


def test_judge_point_and_upper_bound():
    gate = GateConfig(max_flips=0.35, per_task={"a": {"max_acc_drop": 0.03}})
    assert study.judge(_rows(), gate, upper=False) == (True, 0.0)
    passes, violation = study.judge(_rows(), gate, upper=True)
    # excesses: task b flips upper end 0.45 over 0.35 -> 0.10 / (0.35 + 0.001) = 0.285; task a drop (upper end)
    # 0.04 over 0.03 -> 0.01 / (0.03 + 0.001) = 0.323, the larger.
    assert not passes and violation == pytest.approx(0.01 / 0.031)
    assert study.judge(_rows(), GateConfig(), upper=True) == (True, 0.0)
    nan = _rows(kl_mean=[float("nan"), 0.1])
    assert study.judge(nan, GateConfig(max_choice_kl_mean=1.0), upper=False) == (False, MISSING_VIOLATION)


def test_pareto_front():
    configs = pd.DataFrame({"label": list("abcde"), "cost": [2.0, 3.0, 3.0, 4.0, 5.0],
                            "worst_flips": [0.30, 0.10, 0.20, 0.10, 0.05]})
    configs = configs.sort_values(["cost", "worst_flips"]).reset_index(drop=True)
    assert outputs.pareto(configs)["label"].tolist() == ["a", "b", "e"]


@pytest.mark.parametrize("option", sorted(p.stem for p in (Path(CONF_DIR) / "search_space").glob("*.yaml")))
def test_search_config_root_composes(option):
    from hydra import compose, initialize_config_dir

    import flipbench.cli  # noqa: F401  (the run schema and resolvers)

    settings.register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        typed, budget = settings.to_typed(compose("search", [f"search_space={option}", "search.max_model_gb=2GiB"]))
    assert budget == settings.Budget(None, 2 * 2**30) and typed.model.path == "bundled:tiny"
    space.check_space(typed.search.space)
    if option == "default":
        assert len(space.grid(typed.search.space)) == 4 * 2 + 3 * 2 * 2 + 2 * 2  # RTN, GPTQ, TACQ


def test_confirm_adjusts_the_bounds_for_the_configurations_compared(tmp_path):
    """Issue 23, case 8. 0 flips in 100 docs: the exact 95% upper bound 1 - 0.025^(1/100) = 0.0362 passes
    max_flips=0.05; compared among m = 10 configurations each bound is taken at 1 - 0.05/10 = 99.5%,
    1 - 0.0025^(1/100) = 0.0582, and the configuration no longer passes. With m = 1 the bound stays 95%."""
    from flipbench.config import FlipbenchConfig
    from flipbench.metrics import annotate, summarize
    from tests.metrics.tables import mc_row, table

    run = tmp_path / "trials" / "rtn-w4" / "docs100"
    run.mkdir(parents=True)
    samples = annotate(table([mc_row(i, 0, [0.0, -1.0], [0.0, -1.0]) for i in range(100)]))
    samples.to_parquet(run / "samples.parquet", index=False)
    gate = GateConfig(max_flips=0.05, on="upper_ci")
    summarize(samples, n_resamples=100).to_csv(run / "summary.csv", index=False)
    ctx = study.Context(tmp_path, [], None, gate, False, {}, {"rtn-w4": {"cost": 4.0}}, [1.0], {"mini_mc": 100}, 2, False)
    configs = pd.DataFrame({"label": ["rtn-w4"], "run": ["trials/rtn-w4/docs100"], "passes": [True], "violation": [0.0]})
    cfg = FlipbenchConfig()
    cfg.eval.bootstrap = 100
    one = outputs.confirm(ctx, cfg, configs, m=1).iloc[0]
    assert one["passes"] and one["confidence"] == 0.95 and one["gate_verdict"] == "PASS"
    ten = outputs.confirm(ctx, cfg, configs, m=10).iloc[0]
    assert ten["confidence"] == pytest.approx(0.995) and not ten["passes"] and ten["passes_unadjusted"]
    assert ten["violation"] == pytest.approx((1 - 0.0025 ** (1 / 100) - 0.05) / 0.051, rel=1e-6)
