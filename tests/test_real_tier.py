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
                      "--calib-samples", "4", "--calib-len", "32", "--methods", "rtn", "--bits", "4", "--jobs", "1",
                      "--fragment", ""])
    assert code == 0
    sweep = pd.read_csv(next((scratch / "results" / "sweeps").glob("*/sweep_summary.csv")))
    assert set(sweep["task"]) == {"mmlu", "arc_challenge", "hellaswag", "winogrande"}
    assert sweep.set_index("task")["n"].to_dict() == {"mmlu": 1, "arc_challenge": 2, "hellaswag": 2, "winogrande": 2}


@pytest.mark.slow
def test_real_winogrande_scores_as_plain_lm_eval_per_doc(tmp_path):
    """Winogrande (two contexts, one shared continuation) on the real model: flipbench's per-doc correctness on
    both sides equals a plain lm-eval run of lm-eval's own winogrande YAML over the same docs."""
    import subprocess
    import sys

    from benchmarks import real_agreement, real_setup

    model, data = SCRATCH / "smollm2-135m", real_setup.data_root(SCRATCH / "pkgs") / "winogrande"
    if not (model / "config.json").exists() or not data.is_dir():
        pytest.skip(f"run `make real` first (or set FLIPBENCH_REAL_SCRATCH): {SCRATCH} holds no model and data")
    docs = 6
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run([sys.executable, "-m", "flipbench", "model=hf", f"model.path={model.resolve()}",
                    "model.dtype=float32", "suite=standard", "suite.tasks=[winogrande]",
                    f"+suite.data_files.winogrande={data.resolve()}", f"+suite.task_limits.winogrande={docs}",
                    "compression=rtn", "compression.bits=3", "eval.batch_size=4",
                    f"output.root={tmp_path / 'results'}"], env=env, check=True)
    run = next((tmp_path / "results" / "runs").iterdir())
    found = real_agreement.compare(run, model, data, docs)
    assert found["docs"] == docs and found["differing_docs"] == [] and found["agreeing_doc_sides"] == 2 * docs
    assert found["flipbench_acc"] == found["lm_eval_acc"]
    assert 0 < found["lm_eval_acc"][0] < 1  # mixed right and wrong docs: reading every doc as wrong would fail
