"""The real-model tier on a small slice (slow; needs `make real`'s scratch folder, which downloads from PyPI)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

SCRATCH = Path(os.environ.get("FLIPBENCH_REAL_SCRATCH", "results/real"))


@pytest.mark.slow
def test_real_tier_slice_runs_every_task(tmp_path):
    from benchmarks import real, real_setup

    model = SCRATCH / "smollm2-135m"
    if not (model / "config.json").exists() or not real_setup.data_root(SCRATCH / "pkgs").is_dir():
        pytest.skip(f"run `make real` first (or set FLIPBENCH_REAL_SCRATCH): {SCRATCH} holds no model and data")
    scratch = tmp_path / "real"
    (scratch).mkdir()
    (scratch / "pkgs").symlink_to((SCRATCH / "pkgs").resolve())
    code = real.main(["--scratch", str(scratch), "--model-dir", str(model.resolve()), "--subjects", "1",
                      "--mmlu-docs", "1", "--arc-docs", "2", "--hellaswag-docs", "2", "--winogrande-docs", "2",
                      "--calib-samples", "4", "--calib-len", "32", "--methods", "rtn", "--bits", "4", "--jobs", "1"])
    assert code == 0
    sweep = pd.read_csv(next((scratch / "results" / "sweeps").glob("*/sweep.csv")))
    assert set(sweep["task"]) == {"mmlu", "arc_challenge", "hellaswag", "winogrande"}
    assert sweep.set_index("task")["n"].to_dict() == {"mmlu": 1, "arc_challenge": 2, "hellaswag": 2, "winogrande": 2}
