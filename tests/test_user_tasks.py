"""A user's own task: the worked example in tasks/examples/critical_queries, run as a user would run it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from flipbench import pipeline, tasks
from flipbench.config import ConfigError, SuiteConfig
from tests.conftest import compose

EXAMPLE = Path(__file__).resolve().parent.parent / "tasks" / "examples" / "critical_queries"
DESCRIPTION = "The following are questions about Acme Cloud's customer policies.\n\n"


def example_rows() -> list[dict]:
    lines = (EXAMPLE / "data" / "critical_queries.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_example_file_is_well_formed():
    rows = example_rows()
    assert len(rows) == 20 and len({row["id"] for row in rows}) == 20
    for row in rows:
        assert 3 <= len(row["choices"]) <= 4 and 0 <= row["answer"] < len(row["choices"])


def test_critical_queries_against_itself(random_llama, tmp_path, monkeypatch):
    # Run from elsewhere: the YAML's relative data_files must resolve against the YAML's own folder.
    monkeypatch.chdir(tmp_path)
    run_dir = pipeline.run(compose([
        "model=hf", f"model.path={random_llama}", "suite=standard", f"suite.include_path={EXAMPLE}",
        "suite.tasks=[critical_queries]", "+suite.metrics.critical_queries=[acc]", "compression=none",
        "eval.batch_size=4", "eval.bootstrap=50", "output.plots=false", f"output.root={tmp_path / 'results'}"]))
    samples = pd.read_parquet(run_dir / "samples.parquet")
    summary = pd.read_csv(run_dir / "summary.csv")
    rows = example_rows()

    assert len(samples) == 20 and set(samples["task"]) == {"critical_queries"}
    assert sorted(samples["doc_id"]) == list(range(20))
    assert (samples["pred_base"] == samples["pred_comp"]).all() and (samples["kl"].abs() < 1e-12).all()
    for _, sample in samples.iterrows():
        row = rows[sample["doc_id"]]
        assert sample["prompt"] == f"{DESCRIPTION}Question: {row['question']}\nAnswer:"
        assert sample["target"] == str(row["answer"]) and sample["choices"].tolist() == row["choices"]
    # The docs' subject field gives per-area rows next to the overall one.
    assert set(samples["group"]) == {row["subject"] for row in rows}

    overall = summary[(summary["task"] == "critical_queries") & (summary["group"] == "all")]
    headline = overall[overall["headline"].astype(bool)]
    assert len(headline) == 1 and headline["metric"].iloc[0] == "acc"  # chosen by +suite.metrics
    assert headline["n"].iloc[0] == 20 and headline["flips"].iloc[0] == 0
    assert (summary["flips"] == 0).all()


def test_editing_the_queries_file_evaluates_the_baseline_again(random_llama, tmp_path):
    folder = shutil.copytree(EXAMPLE, tmp_path / "my_queries")
    overrides = ["model=hf", f"model.path={random_llama}", "suite=standard", f"suite.include_path={folder}",
                 "suite.tasks=[critical_queries]", "compression=none", "eval.batch_size=4", "eval.bootstrap=0",
                 "output.plots=false", f"output.root={tmp_path / 'results'}"]
    pipeline.run(compose(overrides))
    rows = example_rows()
    rows[0]["choices"] = ["Refund the unused days", "Keep the plan active to the end of the cycle", "Refund the month"]
    (folder / "data" / "critical_queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    run_dir = pipeline.run(compose(overrides))
    assert json.loads((run_dir / "manifest.json").read_text())["baseline_cache_hit"] is False
    samples = pd.read_parquet(run_dir / "samples.parquet")
    assert samples.loc[samples["doc_id"] == 0, "choices"].iloc[0].tolist() == rows[0]["choices"]


def test_unknown_task_name_suggests_the_closest():
    suite = SuiteConfig(tasks=["critical_querys"], include_path=str(EXAMPLE))
    with pytest.raises(ConfigError, match="unknown task 'critical_querys'; did you mean critical_queries"):
        tasks.resolve(suite)


def test_include_path_must_be_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory of lm-eval task YAML files"):
        tasks.resolve(SuiteConfig(tasks=["critical_queries"], include_path=str(tmp_path / "nowhere")))
