"""The real pipeline on a tiny random model and tiny local tasks: every contract file and column."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flipbench import pipeline
from flipbench.report import main as rebuild
from tests.conftest import compose, mini_overrides

SAMPLE_COLUMNS = ["task", "group", "doc_id", "doc_hash", "prompt", "target", "pred_base", "pred_comp", "correct_base",
                  "correct_comp", "p_base", "p_comp", "kl", "js", "margin_base"]
SUMMARY_COLUMNS = ["task", "metric", "n", "acc_base", "acc_comp", "delta_acc", "flips", "lost", "gained", "label_loyalty",
                   "prob_loyalty", "kl_mean", "kl_p99", "kappa", "mcnemar_p", "flips_ci_low", "flips_ci_high",
                   "delta_acc_ci_low", "delta_acc_ci_high", "avg_bits"]


def check_contract(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    for name in ("config.yaml", "manifest.json", "run.log", "samples.parquet", "summary.csv", "report.md", "report.html"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "plots" / "accuracy_vs_flips.png").is_file()
    assert (run_dir / "plots" / "accuracy_vs_flips.svg").is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert list(manifest)[-1] == "status" and manifest["status"] == "complete"
    for key in ("flipbench", "lm_eval", "torch", "transformers"):
        assert manifest["versions"][key]
    assert {"load_baseline", "evaluate_baseline", "compress", "evaluate_compressed", "report"} <= set(manifest["stage_seconds"])
    samples = pd.read_parquet(run_dir / "samples.parquet")
    summary = pd.read_csv(run_dir / "summary.csv")
    assert set(SAMPLE_COLUMNS) <= set(samples.columns)
    assert set(SUMMARY_COLUMNS) <= set(summary.columns)
    assert not samples.duplicated(["task", "group", "doc_id", "filter"]).any()
    return samples, summary, manifest


def test_baseline_against_itself_has_no_flips_and_caches(mini_run_overrides):
    run_dir = pipeline.run(compose(mini_run_overrides + ["compression=none"]))
    samples, summary, manifest = check_contract(run_dir)
    # 12 MC docs + 6 generative docs under two filters.
    assert len(samples) == 12 + 6 * 2
    assert set(samples["group"][samples["task"] == "mini_mc"]) == {"alpha", "beta"}
    assert (summary["flips"] == 0).all() and (summary["label_loyalty"] == 1).all()
    mc = samples[samples["output_type"] == "multiple_choice"]
    assert (mc["kl"].abs() < 1e-12).all()
    assert manifest["baseline_cache_hit"] is False
    latest = Path(run_dir).parent.parent / "latest"
    assert latest.resolve() == Path(run_dir).resolve()
    # The headline row of mini_mc is acc_norm, as configured, and both metrics are reported.
    heads = summary[(summary["task"] == "mini_mc") & (summary["group"] == "all")]
    assert heads["metric"].tolist()[:2] == ["acc_norm", "acc"] and bool(heads["headline"].iloc[0])
    # The generative task's headline is its first listed filter (strict-match), not the alphabetical first.
    gen_heads = summary[(summary["task"] == "mini_gen") & (summary["group"] == "all")]
    assert gen_heads["filter"].tolist() == ["strict-match", "flexible-extract"]
    again = pipeline.run(compose(mini_run_overrides + ["compression=none"]))
    assert json.loads((again / "manifest.json").read_text())["baseline_cache_hit"] is True
    assert pd.read_parquet(again / "samples.parquet")[["pred_base", "correct_base"]].equals(samples[["pred_base", "correct_base"]])


@pytest.fixture(scope="module")
def rtn2_run(random_llama, mini_tasks, tmp_path_factory) -> tuple[list[str], Path]:
    """One 2-bit RTN run shared by the tests below (overrides, run folder); later runs under the same output root
    take the baseline from its cache."""
    overrides = mini_overrides(random_llama, mini_tasks, tmp_path_factory.mktemp("rtn2") / "results")
    overrides += ["compression=rtn", "compression.bits=2"]
    return overrides, pipeline.run(compose(overrides))


def test_quantized_run_flips_and_report_rebuilds_from_disk(rtn2_run):
    _, run_dir = rtn2_run
    samples, summary, manifest = check_contract(run_dir)
    assert manifest["compression"]["method"] == "rtn"
    assert math.isclose(summary["avg_bits"].iloc[0], manifest["compression"]["avg_bits"])
    mc = samples[samples["output_type"] == "multiple_choice"]
    assert (mc["kl"] > 0).all()  # 2-bit weights move every choice distribution
    gen = samples[samples["output_type"] == "generate_until"]
    assert gen["n_tokens"].notna().all()
    # flips counted again from the stored per-doc correctness of each task's headline (metric, filter)
    for _, head in summary[summary["headline"] & (summary["group"] == "all")].iterrows():
        rows = samples[(samples["task"] == head["task"]) & (samples["filter"] == head["filter"])]
        lost = int(((rows["correct_base"] == 1) & (rows["correct_comp"] == 0)).sum())
        gained = int(((rows["correct_base"] == 0) & (rows["correct_comp"] == 1)).sum())
        assert head["n"] == len(rows) and (head["lost"], head["gained"]) == (lost / len(rows), gained / len(rows))
        assert head["flips"] == (lost + gained) / len(rows)
    before = (run_dir / "summary.csv").read_text()
    (run_dir / "summary.csv").unlink()
    assert rebuild([str(run_dir)]) == 0
    assert (run_dir / "summary.csv").read_text() == before


def test_run_records_both_sizes_and_reports_the_size_saved(rtn2_run):
    """Sizes counted by hand (tests/test_report.py): float32 parameters against RTN w2's 2.25 bits a linear weight."""
    from transformers import AutoConfig

    from tests.test_report import llama_params_by_hand

    overrides, run_dir = rtn2_run
    other, linear = llama_params_by_hand(AutoConfig.from_pretrained(next(o.split("=", 1)[1] for o in overrides
                                                                        if o.startswith("model.path="))))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["baseline_size"]["bytes"] == 4 * (other + linear) and manifest["baseline_size"]["dtype"] == "float32"
    assert manifest["compression"]["model_bytes"] == 4 * other + linear * 9 // 32
    summary = pd.read_csv(run_dir / "summary.csv")
    assert (summary["baseline_bytes"] == 4 * (other + linear)).all()
    saved = 4 * linear - linear * 9 // 32
    ratio = 4 * (other + linear) / (4 * other + linear * 9 // 32)
    assert f"({saved / 1e3:.3g} kB saved, {ratio:.2f}× smaller; parameters at float32 evaluated)" in (
        run_dir / "report.md").read_text()


def test_token_kl_is_the_same_from_stored_cached_or_reloaded_baseline(rtn2_run, monkeypatch):
    """Three ways to get the baseline side of token KL must agree: log-probs kept before in-place quantization
    (the shared run, which evaluated the baseline; its 320-token vocabulary is kept whole under the default
    top-256), the same read back from the baseline cache, and (budget 0) the baseline reloaded after compression.
    A top-16 reference (recomputed: the cached one is for another k) brackets those exact values."""
    overrides, stored_dir = rtn2_run
    base = overrides + ["output.plots=false"]
    root = next(o for o in overrides if o.startswith("output.root=")).split("=", 1)[1]
    cache_dir = Path(root) / "cache"
    kl, upper = {}, {}
    for case, extra in (("stored", None), ("cached", []), ("reloaded", ["eval.token_kl_reference_mb=0", "eval.cache=false"]),
                        ("top16", ["eval.token_kl_topk=16"])):
        with monkeypatch.context() as patch:
            if case == "cached":  # must come from the cache: computing it again would fail here
                patch.setattr("flipbench.tokenkl.answer_logprobs", lambda *a, **k: pytest.fail("recomputed"))
            run_dir = stored_dir if extra is None else pipeline.run(compose(base + extra))
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["baseline_cache_hit"] is (case in ("cached", "top16"))
        if case == "cached":  # the reference was stored with the baseline and read back
            assert len(list(cache_dir.glob("*/side.kl.pt"))) == 1
        gen = pd.read_parquet(run_dir / "samples.parquet").query("output_type == 'generate_until'").set_index(["doc_id", "filter"])
        kl[case] = gen["kl"].sort_index()
        upper[case] = gen["tok_kl_upper"].map(np.mean).sort_index()
    assert (kl["stored"] > 0).all() and len(kl["stored"]) == 12  # 6 docs x 2 filters, every one scored
    pd.testing.assert_series_equal(kl["stored"], kl["cached"])
    pd.testing.assert_series_equal(kl["stored"], kl["reloaded"], rtol=1e-5)
    assert (upper["stored"].to_numpy() == kl["stored"].to_numpy()).all()  # exact: no interval
    assert (kl["top16"] <= kl["stored"] + 1e-6).all() and (kl["stored"] <= upper["top16"] + 1e-6).all()
    assert (kl["top16"] < upper["top16"]).all()
    summary = pd.read_csv(run_dir / "summary.csv").query("task == 'mini_gen' and group == 'all'").iloc[0]
    assert summary["kl_mean"] < summary["kl_mean_upper"]
    assert "from a top-16 baseline reference: the exact mean KL lies in" in (run_dir / "report.md").read_text()


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "flipbench", *overrides], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_gate_failure_exits_3(rtn2_run, tmp_path):
    overrides, _ = rtn2_run  # its output root: the baseline comes from the cache
    done = run_cli(*overrides, "gate.max_choice_kl_mean=0.0", "output.plots=false", cwd=tmp_path)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "gate: FAIL" in done.stdout


@pytest.mark.slow  # in-process: tests/test_reliability.py's bad-input table; one CLI run: tests/test_bad_input.py
@pytest.mark.parametrize("override,message", [
    ("suite.tasks=[mini_mcc]", "unknown task 'mini_mcc'; did you mean mini_mc"),
    ("model.path=/nonexistent/model", "does not exist"),
])
def test_cli_bad_input_is_one_line_and_exit_2(mini_run_overrides, tmp_path, override, message):
    done = run_cli(*mini_run_overrides, override, cwd=tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("flipbench: error")]
    assert len(errors) == 1 and message in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_noise_floor_in_another_dtype_reports_flips_kl_and_excess(mini_run_overrides):
    run_dir = pipeline.run(compose(mini_run_overrides + ["compression=rtn", "compression.bits=4", "eval.noise_floor=batch_dtype",
                                                         "eval.noise_batch_size=1", "output.plots=false"]))
    noise = pd.read_parquet(run_dir / "noise_samples.parquet")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["noise_floor"] == {"mode": "batch_dtype", "batch_size": 1, "dtype": "bfloat16", "baseline_batch_size": 4,
                                       "baseline_dtype": "float32"}
    summary = pd.read_csv(run_dir / "summary.csv")
    whole = summary[summary["group"] == "all"]
    assert np.allclose(whole["flips_excess"], whole["flips"] - whole["noise_flips"])
    assert (whole["noise_flips_ci_low"] <= whole["noise_flips"]).all() and (whole["noise_flips"] <= whole["noise_flips_ci_high"]).all()
    # bf16 really perturbs the baseline: its KL to the fp32 baseline is positive in both scopes
    assert (whole["noise_kl_mean"] > 0).all() and set(whole["noise_kl_scope"]) == {"choice", "token"}
    gen = noise[noise["output_type"] == "generate_until"]
    assert (gen["tok_kl"].map(len) == gen["n_tokens"]).all()
    assert (run_dir / "noise_summary.csv").is_file()
    assert "Noise floor (batch_dtype)" in (run_dir / "report.md").read_text()
