"""`flipbench compare` on results flipbench did not collect: lm-eval --log_samples output and per-item files.

Hand-built logs and files pin every number by hand; one test writes real lm-eval output (lm-eval's own
EvaluationTracker, as `lm_eval --log_samples --output_path` does) from the bundled model and its RTN copy, and
the comparison equals the in-process run's summary on the same docs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flipbench import artifact, foreign
from flipbench.config import ConfigError
from tests.conftest import compose

SUMMARY_KEYS = ["task", "group", "metric", "filter"]
SIDE_ONLY = ["method", "bits", "avg_bits", "sparsity", "params_kept"]  # what the side was; not a metric


@pytest.fixture
def hooked(monkeypatch):
    """artifact.load_side / check_compatible with the foreign hook in front, as the lead wires it."""
    load, check = artifact.load_side, artifact.check_compatible

    def load_side(paths, what):
        return foreign.load_foreign(paths, what) or load(paths, what)

    def check_compatible(base, comp):
        if base.manifest.get("foreign") or comp.manifest.get("foreign"):
            return foreign.check_compatible(base, comp)
        return check(base, comp)

    monkeypatch.setattr(artifact, "load_side", load_side)
    monkeypatch.setattr(artifact, "check_compatible", check_compatible)
    monkeypatch.setattr(foreign.artifact, "check_compatible", check)


def _compare(argv: list[str]) -> Path:
    from flipbench.compare import compare

    return compare(argv)


# ---------------------------------------------------------------- real lm-eval output from the bundled model

LIMIT, BATCH = 4, 4


def _lm_eval_log(model, tokenizer, plan, out: Path) -> Path:
    """What `lm_eval --model hf --tasks synth --limit 4 --batch_size 4 --log_samples --output_path out` writes."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=BATCH)
    results = lm_eval.simple_evaluate(lm, tasks=plan.specs, task_manager=plan.manager, limit=LIMIT, log_samples=True)
    samples = results.pop("samples")
    tracker = EvaluationTracker(output_path=str(out))
    tracker.save_results_aggregated(results=results, samples=samples)
    for task_name in results["configs"]:
        tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    return out


@pytest.fixture(scope="module")
def real_logs(tmp_path_factory):
    """(in-process run folder, base lm-eval output folder, RTN-w2 lm-eval output folder) on the same docs."""
    from flipbench import models, tasks
    from flipbench.config import to_typed
    from flipbench.pipeline import compress, run

    root = tmp_path_factory.mktemp("real_logs")
    overrides = [f"suite.limit={LIMIT}", f"eval.batch_size={BATCH}", "eval.token_kl=false", "compression=rtn",
                 "compression.bits=2", f"output.root={root}/results", "eval.cache=false", "output.plots=false"]
    one = run(compose(overrides + [f"output.run_dir={root}/one"]))
    cfg = to_typed(compose(overrides))
    plan = tasks.resolve(cfg.suite)
    model, tokenizer = models.load_model(cfg.model)
    base = _lm_eval_log(model, tokenizer, plan, root / "lm_eval_base")
    model, tokenizer, _ = compress(model, tokenizer, (None, None), cfg)
    comp = _lm_eval_log(model, tokenizer, plan, root / "lm_eval_rtn")
    return one, base, comp


def test_real_lm_eval_logs_equal_the_in_process_run(real_logs, hooked, tmp_path):
    one, base, comp = real_logs
    two = _compare([str(base), str(comp), f"output.run_dir={tmp_path / 'two'}", "output.plots=false"])
    a, b = pd.read_csv(one / "summary.csv"), pd.read_csv(two / "summary.csv")
    assert len(a) == len(b) > 0 and set(a["task"]) == {"synth_mmlu", "synth_arc", "synth_hellaswag", "synth_gsm8k"}
    pd.testing.assert_frame_equal(a.drop(columns=SIDE_ONLY), b.drop(columns=SIDE_ONLY), check_exact=True)
    x, y = pd.read_parquet(one / "samples.parquet"), pd.read_parquet(two / "samples.parquet")
    for column in ("task", "group", "doc_id", "filter", "doc_hash", "prompt_hash", "prompt", "target", "pred_base",
                   "pred_comp", "correct_base", "correct_comp", "kl", "lm_correct_base", "lm_correct_comp"):
        assert x[column].equals(y[column]), column
    assert [list(v) for v in x["ll_comp"]] == [list(v) for v in y["ll_comp"]]
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["compared"]["compressed"]["model"] == "tiny"
    heads = b[b["headline"] & (b["group"] == "all")].set_index("task")
    assert heads["flips"].sum() > 0 and heads.loc["synth_arc", "kl_mean"] > 0  # not a vacuous equality
