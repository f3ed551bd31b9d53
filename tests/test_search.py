"""Budget search end to end on a tiny random Llama and the mini tasks: a small search, its recommendation
reproduced by an ordinary run, "none passes", a resume after SIGKILL, and the bad inputs that exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from flipbench.search import run
from flipbench.search.__main__ import main

FAST = ["search.min_fraction=0.5", "search.reduction_factor=2", "~search_space"]  # rungs: 6 then 12 docs per task


def search_overrides(random_llama, mini_tasks, root: Path, *extra: str) -> list[str]:
    return [f"model=hf", f"model.path={random_llama}", f"suite.include_path={mini_tasks}", "suite.tasks=[mini_mc,mini_gen]",
            "+suite.metrics.mini_mc=[acc_norm,acc]", f"output.root={root}", "eval.batch_size=4", "eval.bootstrap=200",
            *FAST, *extra]


@pytest.fixture(scope="module")
def small_search(random_llama, mini_tasks, tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    overrides = search_overrides(random_llama, mini_tasks, root, "+search.space.rtn.bits=[2,8]", "gate.max_flips=0.5",
                                 "search.id=small", "search.skip_costlier=false", "search.pruner=none",
                                 "output.save_model=true")
    return run(overrides), overrides


def test_small_search_outputs(small_search):
    folder, _ = small_search
    for name in ("trials.csv", "pareto.csv", "recommendation.json", "pareto.png", "search_report.md",
                 "search_report.html", "study.db"):
        assert (folder / name).is_file(), name
    trials = pd.read_csv(folder / "trials.csv")
    assert set(trials["fidelity"]) == {0.5, 1.0}  # both configurations screened on half the docs, then all (no pruner)
    sizes = {"mini_mc": 12, "mini_gen": 6}
    for _, row in trials.iterrows():  # half of each task's docs (a seeded random half), then every doc
        assert row["available"] == sizes[row["task"]] and row["n"] == sizes[row["task"]] * row["fidelity"]
    screened = trials[trials["fidelity"] == 0.5]
    # the screening rung's docs are the sequential gate's seeded order's first half of each task
    run = folder / screened["run"].iloc[0]
    samples = pd.read_parquet(run / "samples.parquet").drop_duplicates(["task", "doc_id"])
    assert json.loads((run / "manifest.json").read_text())["sample"]["mini_mc"] == {"docs": 6, "available": 12,
                                                                                   "share": 0.5}
    # stratified over mini_mc's subjects (even ids alpha, odd beta, 6 each): a prefix of 6 holds each within one
    # doc of 6 * 6/12 = 3, so exactly 3 of each (an unstratified half would hold 3 and 3 with probability 0.43)
    drawn = samples.loc[samples["task"] == "mini_mc", "doc_id"].astype(int)
    assert len(drawn) == 6 and (drawn % 2 == 0).sum() == 3
    # the screening rung's own reports say, near the top, that it ran on a sample; a full rung's do not
    for name in ("report.md", "report.html"):
        lines = (run / name).read_text().replace("<p>", "\n").splitlines()
        line = next(i for i, text in enumerate(lines) if "Screening trial: evaluated on a seeded share 0.5" in text)
        assert line < 6 and "mini_mc 6 of 12" in lines[line] and "mini_gen 3 of 6" in lines[line]
        assert "not a full one" in lines[line]
    full_run = folder / trials.loc[trials["fidelity"] == 1.0, "run"].iloc[0]
    assert "Screening trial" not in (full_run / "report.md").read_text()
    rec = json.loads((folder / "recommendation.json").read_text())
    assert rec["grid_size"] == 2 and rec["full_fidelity_evaluations"] == 2 and rec["screening_evaluations"] == 2
    full = trials[trials["full_fidelity"]]
    worst = full.groupby("label")["flips"].max()
    passing = [label for label, flips in worst.items() if flips <= 0.5]
    # The recommendation is the cheapest configuration whose every task has flips <= 0.5 at 12 docs.
    cheapest = min(passing, key=lambda label: full.loc[full["label"] == label, "avg_bits"].iloc[0])
    assert rec["status"] == "pass" and rec["label"] == cheapest
    # The baseline is evaluated once, on every doc; every other run (screening rungs included) took it from the cache.
    hits = [json.loads(p.read_text())["baseline_cache_hit"] for p in folder.glob("trials/*/*/manifest.json")]
    assert sorted(hits) == [False, True, True, True]


def test_recommended_model_is_saved(small_search):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    folder, _ = small_search
    rec = json.loads((folder / "recommendation.json").read_text())
    saved = Path(rec["saved_model"])
    assert saved == folder / "recommended" / "model"
    quant = json.loads((saved / "config.json").read_text())["quantization_config"]
    assert quant["format"] == "pack-quantized" and quant["config_groups"]["group_0"]["weights"]["num_bits"] == rec["params"]["bits"]
    manifest = json.loads((folder / "recommended" / "manifest.json").read_text())
    assert manifest["saved_model"]["path"] == str(saved) and manifest["compression"]["avg_bits"] == pytest.approx(rec["avg_bits"])
    assert not any(folder.glob("trials/*/*/model"))  # trials never save models
    AutoModelForCausalLM.from_pretrained(saved, quantization_config=CompressedTensorsConfig(dequantize=True))


def test_costs_estimated_from_shapes_match_the_runs(small_search):
    folder, _ = small_search
    trials = pd.read_csv(folder / "trials.csv").drop_duplicates(["label", "fidelity"])
    for _, row in trials.iterrows():
        compression = json.loads((folder / row["run"] / "manifest.json").read_text())["compression"]
        assert row["avg_bits"] == pytest.approx(compression["avg_bits"], rel=1e-12)
        assert row["model_gb"] * 1e9 == pytest.approx(compression["model_bytes"], abs=1)


def test_recommendation_reproduces(small_search, tmp_path):
    from conftest import compose

    from flipbench import pipeline

    folder, _ = small_search
    rec = json.loads((folder / "recommendation.json").read_text())
    run_dir = pipeline.run(compose([*rec["overrides"], f"output.root={tmp_path}"]))
    # search pass => flipbench's own gate passes the same configuration (issue 23, case 3)
    assert rec["passes"] and json.loads((run_dir / "manifest.json").read_text())["gate"]["verdict"] == "PASS"
    summary = pd.read_csv(run_dir / "summary.csv")
    rows = summary[summary["headline"] & (summary["group"] == "all")]
    for _, row in rows.iterrows():
        expected = rec["metrics"][row["task"]]
        for column in ("n", "flips", "flips_ci_low", "flips_ci_high", "delta_acc", "kl_mean"):
            assert row[column] == pytest.approx(expected[column], rel=1e-9, abs=1e-12), (row["task"], column)


@pytest.mark.parametrize("extra, words", [
    (["+search.space.awq.bits=[4]"], "search.space.awq: unknown method"),
    (["+search.space.rtn.bits=[2,4]", "search.max_avg_bits=1.5"], "no configuration in search.space fits the budget"),
    (["+search.space.rtn.bits=[2,4]", "search.max_model_gb=3"], "search.max_model_gb='3' has no unit"),
    (["+search.space.rtn.bits=[2,4]", "compression=gptq"], "the search chooses the compression"),
    (["+search.space.rtn.bits=[9]"], "compression.bits=9 is outside 2-8"),
    (["+search.space.gptq.group_size=[32]", "+search.space.gptq.act_order=[true]", "output.save_model=true"],
     "needs compression.static_groups=true"),
])
def test_bad_input_exits_2(random_llama, mini_tasks, tmp_path, capsys, extra, words):
    code = main(search_overrides(random_llama, mini_tasks, tmp_path, *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and "\n" not in err
    assert not (tmp_path / "searches").exists()


@pytest.mark.slow
def test_none_passes(random_llama, mini_tasks, tmp_path, capsys):
    # KL(base||comp) is 0 only where the two models' distributions are identical: never at 2 or 3 bits.
    overrides = search_overrides(random_llama, mini_tasks, tmp_path, "+search.space.rtn.bits=[2,3]",
                                 "gate.max_choice_kl_mean=0", "gate.max_token_kl_mean=0", "search.id=none",
                                 "search.pruner=none")
    assert main(overrides) == 3
    folder = tmp_path / "searches" / "none"
    rec = json.loads((folder / "recommendation.json").read_text())
    assert rec["status"] == "none passes" and not rec["passes"]
    full = pd.read_csv(folder / "trials.csv").query("full_fidelity == True")
    assert (full["kl_mean"] > 0).all()
    # violation = the largest kl_mean over tasks / 0.001 (relative excess over the limit 0, see study.judge)
    worst = full.groupby("label")["kl_mean"].max()
    closest = worst.idxmin()
    assert full.groupby("label")["violation"].first()[closest] == pytest.approx(worst[closest] / 1e-3)
    assert rec["label"] == closest


def _finished(db: Path):
    import optuna

    if not db.exists():
        return [], []
    try:
        trials = optuna.load_study(study_name="search", storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    except Exception:  # the study is still being created
        return [], []
    done = [t for t in trials if t.state.is_finished()]
    return done, [t for t in trials if t.state.name == "RUNNING"]


@pytest.mark.slow
def test_resume_after_kill(random_llama, mini_tasks, tmp_path):
    overrides = search_overrides(random_llama, mini_tasks, tmp_path, "+search.space.rtn.bits=[2,4,8]", "search.id=k",
                                 "search.skip_costlier=false", "search.pruner=none")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "FLIPBENCH_LOG": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "flipbench.search", *overrides], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "searches" / "k" / "study.db"
    deadline = time.time() + 600
    while time.time() < deadline:
        done, running = _finished(db)
        if done and running and running[0].user_attrs.get("runs"):  # killed mid-trial, after one of its rungs
            break
        assert proc.poll() is None, "the search ended before it could be killed"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: (t.state, t.value, t.params) for t in _finished(db)[0]}
    killed = _finished(db)[1][0]
    first_rung = tmp_path / "searches" / "k" / next(iter(killed.user_attrs["runs"].values())) / "manifest.json"
    stamp = first_rung.stat().st_mtime_ns

    run(overrides)
    done, running = _finished(db)
    assert not running
    after = {t.number: (t.state, t.value, t.params) for t in done}
    assert all(after[n] == before[n] for n in before)  # no finished trial lost or changed
    retried = [t for t in done if t.user_attrs.get("retry_of") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params and retried[0].state.name == "COMPLETE"
    assert first_rung.stat().st_mtime_ns == stamp  # the killed trial's finished rung was not evaluated again
    labels = {t.user_attrs["label"] for t in done if t.state.name == "COMPLETE"}
    assert labels == {"rtn-w2", "rtn-w4", "rtn-w8"}
