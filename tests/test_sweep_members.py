"""A sweep's report lists every member (failed and missing ones with their error), Holm-adjusts the pairwise
McNemar p-values, names the members that pass the gate, and exits 3 when none does (issue 23, case 8)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from flipbench import sweep
from flipbench.metrics import annotate, summarize
from tests.metrics.tables import mc_row, table


def member(sweep_dir, name: str, lost: int, verdict: str):
    """A complete member: 10 docs of task t, the first ``lost`` of them lost; its gate verdict as the run wrote it."""
    run = sweep_dir / name
    run.mkdir(parents=True)
    samples = annotate(table([mc_row(i, 0, [0.0, -1.0], [-1.0, 0.0] if i < lost else [0.0, -1.0], task="t")
                              for i in range(10)]))
    samples.to_parquet(run / "samples.parquet", index=False)
    summary = summarize(samples, n_resamples=0)
    summary.insert(0, "method", "rtn")
    summary.insert(1, "bits", int(name.split("w")[-1]))
    summary.insert(2, "avg_bits", float(name.split("w")[-1]))
    summary.to_csv(run / "summary.csv", index=False)
    (run / "manifest.json").write_text(json.dumps({"status": "complete", "gate": {"verdict": verdict}}))


@pytest.fixture
def sweep_dir(tmp_path):
    folder = tmp_path / "sweep"
    member(folder, "0-rtn-w2", 6, "FAIL")
    member(folder, "1-rtn-w3", 5, "FAIL")
    member(folder, "2-rtn-w4", 0, "PASS")
    (folder / "3-rtn-w8").mkdir()
    (folder / "3-rtn-w8" / "manifest.json").write_text(json.dumps({"status": "failed", "error": "CUDA out of memory"}))
    return folder


OVERRIDES = ["compression=rtn", "compression.bits=2,3,4,8,6"]  # five members; the fifth left no folder


def test_report_lists_failed_and_missing_members_and_the_passing_ones(sweep_dir):
    assert sweep.aggregate(sweep_dir, OVERRIDES) is not None
    roster = pd.read_csv(sweep_dir / "sweep_members.csv", keep_default_na=False)
    assert roster["status"].tolist() == ["complete", "complete", "complete", "failed", "missing"]
    assert roster["run"].tolist()[-1] == "4-?" and roster["error"].tolist()[3] == "CUDA out of memory"
    md = (sweep_dir / "sweep_report.md").read_text()
    assert "Release gate: 1 of 5 members pass: 2-rtn-w4." in md
    assert "| 3-rtn-w8 | failed |  | CUDA out of memory |" in md
    assert "2 member(s) did not complete" in md
    assert sweep.verdict_line(sweep_dir) == ("gate: 1 of 5 members pass (2-rtn-w4)", 0)


def test_pairwise_mcnemar_is_holm_adjusted(sweep_dir):
    sweep.aggregate(sweep_dir, OVERRIDES)
    pairs = pd.read_csv(sweep_dir / "sweep_overlap.csv").set_index(["member_a", "member_b"])
    # w2 vs w4: w2 wrong on 6 docs where w4 is right, no doc the other way: exact p = 2 / 2^6 = 0.03125;
    # w3 vs w4: 2 / 2^5 = 0.0625; w2 vs w3: 1 vs 0 discordant, p = 1. Holm over the three:
    # sorted 0.03125, 0.0625, 1 -> 3 * 0.03125 = 0.09375, max(0.09375, 2 * 0.0625 = 0.125), max(0.125, 1) = 1.
    assert pairs.loc[("0-rtn-w2", "2-rtn-w4"), "mcnemar_p"] == pytest.approx(0.03125)
    assert pairs["mcnemar_p_holm"].to_dict() == pytest.approx({("0-rtn-w2", "1-rtn-w3"): 1.0,
                                                               ("0-rtn-w2", "2-rtn-w4"): 0.09375,
                                                               ("1-rtn-w3", "2-rtn-w4"): 0.125})


def test_a_gated_sweep_where_no_member_passes_exits_3(sweep_dir):
    (sweep_dir / "2-rtn-w4" / "manifest.json").write_text(json.dumps({"status": "complete", "gate": {"verdict": "FAIL"}}))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": OVERRIDES}}})
    with pytest.raises(SystemExit) as stop:
        sweep.SweepSummary().on_multirun_end(config)
    assert stop.value.code == 3
    assert "none passes (exit 3)" in (sweep_dir / "sweep_report.md").read_text()
    assert sweep.main([str(sweep_dir)]) == 3  # by hand, from the multirun.yaml the callback left
    assert len(pd.read_csv(sweep_dir / "sweep_members.csv")) == 5


def test_no_complete_member_still_reports_the_failures(tmp_path):
    folder = tmp_path / "sweep"
    (folder / "0-rtn-w2").mkdir(parents=True)
    (folder / "0-rtn-w2" / "manifest.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    assert sweep.aggregate(folder, ["compression.bits=2"]) is None
    assert "| 0-rtn-w2 | failed |  | boom |" in (folder / "sweep_report.md").read_text()
