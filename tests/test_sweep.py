"""A Hydra multirun sweep: members in parallel (joblib), one baseline evaluation, aggregated at the end."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest


@pytest.mark.slow  # two joblib processes, ~25 s; the aggregation itself is covered by the other sweep tests
def test_parallel_sweep_evaluates_the_baseline_once_and_aggregates(mini_run_overrides, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    sweep_dir = tmp_path / "results" / "sweeps" / "s1"
    args = [sys.executable, "-m", "flipbench", "-m", *mini_run_overrides, "hydra/launcher=local_parallel",
            "hydra.launcher.n_jobs=2", "compression=rtn", "compression.bits=2,3", f"hydra.sweep.dir={sweep_dir}",
            "output.plots=false"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    members = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "manifest.json").exists())
    assert len(members) == 2
    manifests = [json.loads((m / "manifest.json").read_text()) for m in members]
    assert all(m["status"] == "complete" for m in manifests)
    # Both members share one cache entry: exactly one of them evaluated the baseline.
    assert sorted(m["baseline_cache_hit"] for m in manifests) == [False, True]
    assert len({m["baseline_cache_key"] for m in manifests}) == 1
    table = pd.read_csv(sweep_dir / "sweep_summary.csv")
    assert len(table) == 2 * 2  # bits {2, 3} × tasks {mini_mc, mini_gen}
    assert sorted(table["bits"].unique()) == [2, 3]
    assert {"method", "bits", "avg_bits", "task", "flips", "delta_acc"} <= set(table.columns)
    # avg_bits per channel: bits + (16 + bits) / in_features, parameter-weighted over the decoder linears.
    assert (table["avg_bits"] > table["bits"]).all() and (table["avg_bits"] < table["bits"] + 1).all()
    overlap = pd.read_csv(sweep_dir / "sweep_overlap.csv")
    assert sorted(overlap["task"]) == ["mini_gen", "mini_mc"]  # one pair of members per task
    assert ((overlap["flips_both"] <= overlap[["flips_a", "flips_b"]].min(axis=1))
            & (overlap["flips_either"] >= overlap[["flips_a", "flips_b"]].max(axis=1))).all()
    assert set(pd.read_csv(sweep_dir / "sweep_correlation.csv")["members"]) == {2}
    for name in ("flips_vs_bits", "delta_acc_vs_bits", "kl_vs_flips", "flip_overlap_mini_mc", "flip_overlap_mini_gen"):
        assert (sweep_dir / "plots" / f"{name}.png").is_file()
    assert (sweep_dir / "sweep_report.md").is_file()
