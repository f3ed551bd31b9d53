"""Compression noise: replicas of the same compression, flip counts per doc and the spread per task."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from flipbench import replicas
from flipbench.config import ConfigError, to_typed
from tests.conftest import compose, mini_overrides


def _paired(flips: list[int], groups: list[str]) -> pd.DataFrame:
    """A paired table of 6 docs of one task: the baseline right on all, the compressed side wrong where flips=1."""
    n = len(flips)
    return pd.DataFrame({"task": "t", "group": groups, "doc_id": range(n), "filter": "none", "metric": "acc",
                         "correct_base": [1] * n, "correct_comp": [1 - f for f in flips]})


def test_flip_count_and_the_robust_unstable_split_by_hand():
    groups = ["a", "a", "a", "b", "b", "b"]
    frames = [_paired([1, 1, 0, 0, 1, 0], groups), _paired([1, 0, 0, 0, 1, 1], groups),
              _paired([1, 0, 1, 0, 1, 0], groups).sample(frac=1, random_state=0)]  # any row order
    assert replicas.flip_count(frames).tolist() == [3, 1, 1, 0, 3, 1]
    rows = pd.DataFrame({"task": "t", "group": ["all", "a", "b"], "metric": "acc", "filter": "none"})
    out = replicas.summary(frames, rows).set_index("group")
    # replica flip rates: all 3/6, 3/6, 3/6; a: 2/3, 1/3, 2/3; b: 1/3, 2/3, 1/3
    assert out.loc["all", ["flips_rep_min", "flips_rep_median", "flips_rep_max"]].tolist() == [0.5, 0.5, 0.5]
    assert out.loc["a", ["flips_rep_min", "flips_rep_median", "flips_rep_max"]].tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    # robust: flipped in all three (docs 0 and 4) = 2/6; unstable: in some (1, 2, 5) = 3/6; never: doc 3
    assert out.loc["all", ["flips_robust", "flips_unstable", "replicas"]].tolist() == pytest.approx([2 / 6, 3 / 6, 3])
    assert out.loc["b", ["flips_robust", "flips_unstable"]].tolist() == pytest.approx([1 / 3, 1 / 3])
    assert replicas.distinguished((0.1, 0.2), (0.25, 0.3)) and not replicas.distinguished((0.1, 0.26), (0.25, 0.3))


@pytest.mark.parametrize("overrides,message", [
    # rtn and magnitude draw no data and have no replicas key (the schema refuses it: tests/test_cli_defaults.py)
    (["compression=layerdrop", "compression.replicas=2"], "compression=layerdrop with select=last draws no calibration"),
    (["compression=gptq", "compression.replicas=0"], "compression.replicas=0 must be >= 1"),
    (["compression=gptq", "compression.replica_threads=[0]"], "must list positive thread counts"),
])
def test_replicas_where_they_measure_nothing_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        to_typed(compose(overrides))


@pytest.mark.slow  # three GPTQ compressions and evaluations; the replica tables are pinned by hand-built cases
def test_gptq_replicas_end_to_end(random_llama, mini_tasks, tmp_path):
    """Replica 0 is the single run (same calibration seed); the spread contains it; flip_count lies in 0..K."""
    from flipbench.pipeline import run

    common = mini_overrides(random_llama, mini_tasks, tmp_path / "results") + [
        "compression=gptq", "compression.bits=2", "calibration.n_samples=4", "calibration.seq_len=32",
        "eval.token_kl=false", "output.plots=false"]
    single = run(compose(common + [f"output.run_dir={tmp_path}/single"]))
    three = run(compose(common + ["compression.replicas=3", "compression.replica_threads=[1,2]",
                                  f"output.run_dir={tmp_path}/three"]))
    a, b = pd.read_csv(single / "summary.csv"), pd.read_csv(three / "summary.csv")
    pd.testing.assert_series_equal(a["flips"], b["flips"])  # replica 0 is the run itself
    head = b[(b["group"] == "all") & b["headline"]]
    assert (head["flips_rep_min"] <= head["flips"]).all() and (head["flips"] <= head["flips_rep_max"]).all()
    assert np.allclose(head["flips_robust"] + head["flips_unstable"] >= head["flips_rep_max"] - 1e-12, True)
    samples = pd.read_parquet(three / "samples.parquet")
    assert samples["flip_count"].between(0, 3).all()
    flipped = samples["correct_base"] != samples["correct_comp"]
    assert (samples.loc[flipped, "flip_count"] >= 1).all()  # replica 0's own flips are counted
    manifest = json.loads((three / "manifest.json").read_text())
    assert [(r["calibration_seed"], r["threads"]) for r in manifest["replicas"]] == [(1234, 1), (1235, 2), (1236, 1)]
    assert "compression noise (3 replicas" in (three / "report.md").read_text()


def test_the_hessian_is_summed_in_float64_by_default():
    """H = 2/N Σ x xᵀ over batches: in float64 it equals the exact sum to float64 precision, where float32's running
    rescale-and-add loses ~1e-7 relative (those last bits follow the summation order, i.e. the thread count:
    benchmarks/gptq_threads.py measures the effect on the bundled model)."""
    import torch

    from flipbench.compress.quant.config import QuantConfig
    from flipbench.compress.quant.gptq import GPTQ

    assert QuantConfig(method="gptq").gptq.hessian_dtype == "float64"
    torch.manual_seed(0)
    X = torch.randn(3000, 48) * torch.linspace(0.1, 30.0, 48)
    exact = 2 / 3000 * X.double().t() @ X.double()
    errors = {}
    for dtype in (torch.float32, torch.float64):
        solver = GPTQ(48, "cpu", dtype)
        for chunk in X.split(7):  # many small batches, as calibration arrives
            solver.add_batch(chunk)
        assert solver.H.dtype == dtype
        errors[dtype] = ((solver.H.double() - exact).abs().max() / exact.abs().max()).item()
    assert errors[torch.float64] < 1e-13 < 1e-8 < errors[torch.float32]


def test_sweep_pairs_whose_replica_ranges_overlap_are_not_distinguished():
    from flipbench.sweep import replica_distinguished

    table = pd.DataFrame({"run": ["0-gptq-w2", "1-gptq-w3", "2-rtn-w4"], "task": "t",
                          "flips_rep_min": [0.20, 0.08, np.nan], "flips_rep_max": [0.26, 0.21, np.nan],
                          "replicas": [3, 3, np.nan]})
    pairs = pd.DataFrame({"task": "t", "member_a": ["0-gptq-w2", "0-gptq-w2", "1-gptq-w3"],
                          "member_b": ["1-gptq-w3", "2-rtn-w4", "2-rtn-w4"]})
    out = replica_distinguished(pairs, table)
    assert out[0] is False  # [0.20, 0.26] and [0.08, 0.21] overlap
    assert np.isnan(out[1]) and np.isnan(out[2])  # RTN has no replicas
    table.loc[1, "flips_rep_max"] = 0.19
    assert replica_distinguished(pairs, table)[0] is True
