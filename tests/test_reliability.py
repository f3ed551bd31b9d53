"""Nothing computed is lost, nothing wrong goes unexplained: cache integrity, interrupted runs, bad input."""

import json
import logging
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flipbench import pipeline
from flipbench.cache import BaselineCache
from flipbench.config import ConfigError
from tests.cache_writer import frame, write_repeatedly
from tests.conftest import compose


def same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Parquet returns list cells as arrays; compare the values."""
    return a.to_json() == b.to_json()


def test_cache_round_trip_and_corrupt_entry_is_recomputed(tmp_path, caplog):
    cache = BaselineCache(tmp_path)
    cache.store("k", frame(), {"model": "m"})
    assert same(cache.load("k"), frame())
    data = tmp_path / "k" / "samples.parquet"
    data.write_bytes(data.read_bytes()[:-20] + b"x" * 20)
    with caplog.at_level(logging.WARNING):
        assert cache.load("k") is None
    assert "corrupt or partial" in caplog.text


def test_cache_entry_without_its_sidecar_is_partial(tmp_path):
    cache = BaselineCache(tmp_path)
    cache.store("k", frame(), {})
    (tmp_path / "k" / "artifact.json").unlink()
    assert cache.load("k") is None


def test_two_processes_writing_one_entry_leave_a_valid_entry(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=write_repeatedly, args=(str(tmp_path), 50)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert same(BaselineCache(tmp_path).load("k"), frame(50))
    assert not list(tmp_path.rglob("*.tmp*"))


def test_interrupted_run_is_marked_failed_and_not_latest(mini_run_overrides, monkeypatch, tmp_path):
    real = pipeline.evaluate_side
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate_side", interrupt_second)
    run_dir = tmp_path / "results" / "runs" / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(compose(mini_run_overrides + ["compression=none", "eval.cache=false", f"output.run_dir={run_dir}"]))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == "interrupted during evaluate_compressed"
    assert not (tmp_path / "results" / "latest").exists()
    # Resuming (the way an interrupted sweep member is re-run) finishes it.
    monkeypatch.setattr(pipeline, "evaluate_side", real)
    pipeline.run(compose(mini_run_overrides + ["compression=none", f"output.run_dir={run_dir}"]))
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"


def test_complete_member_is_skipped_unless_redo(mini_run_overrides, tmp_path):
    member = tmp_path / "sweep" / "0"
    overrides = mini_run_overrides + ["compression=none", f"output.run_dir={member}", "output.plots=false"]
    pipeline.run(compose(overrides))
    finished = json.loads((member / "manifest.json").read_text())["finished"]
    pipeline.run(compose(overrides))
    assert json.loads((member / "manifest.json").read_text())["finished"] == finished
    pipeline.run(compose(overrides + ["output.redo=true"]))
    assert json.loads((member / "manifest.json").read_text())["finished"] != finished


def test_same_config_and_seed_give_identical_summary(mini_run_overrides, tmp_path):
    base = mini_run_overrides + ["compression=rtn", "compression.bits=3", "eval.cache=false", "output.plots=false"]
    first = pipeline.run(compose(base + [f"output.run_dir={tmp_path / 'a'}"]))
    second = pipeline.run(compose(base + [f"output.run_dir={tmp_path / 'b'}"]))
    assert (first / "summary.csv").read_text() == (second / "summary.csv").read_text()


def test_diverged_model_is_reported_not_crashed(mini_run_overrides, random_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    broken = tmp_path / "broken"
    model = AutoModelForCausalLM.from_pretrained(random_llama)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(random_llama).save_pretrained(broken)
    run_dir = pipeline.run(compose(mini_run_overrides + ["compression=checkpoint", f"compression.path={broken}"]))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    # every doc of both task types: 12 MC docs (non-finite choice ll) and 6 generative ones (non-finite token log-probs)
    assert manifest["status"] == "complete" and manifest["gate"]["diverged_docs"] == 18
    summary = pd.read_csv(run_dir / "summary.csv")
    mc = summary[(summary["task"] == "mini_mc") & (summary["group"] == "all")].iloc[0]
    assert mc["n"] == 12 and mc["n_nonfinite"] == 12 and np.isfinite(mc["flips"])
    gen = summary[(summary["task"] == "mini_gen") & (summary["group"] == "all") & summary["headline"]].iloc[0]
    assert gen["n_nonfinite"] == 6
    assert "DIVERGED" in (run_dir / "report.md").read_text()


def write_model_dir(folder: Path, weights: bool = True, remote_code: bool = False) -> Path:
    folder.mkdir(parents=True)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 1, "intermediate_size": 8, "vocab_size": 10}
    if remote_code:
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    if weights:
        (folder / "model.safetensors").write_bytes(b"")
    return folder


def bad_inputs(tmp_path: Path, random_llama: Path, mini_tasks: Path) -> dict:
    bad_file = tmp_path / "gsm8k.jsonl"
    bad_file.write_text('{"question": "1+1?"}\n')
    return {
        "unknown hub id offline": (["model.path=nobody-xyz/no-such-model"], "neither a local model directory nor a reachable hub model"),
        "model path does not exist": (["model.path=/nonexistent/model"], "does not exist"),
        "model dir without weights": ([f"model.path={write_model_dir(tmp_path / 'noweights', weights=False)}"], "holds no weights"),
        "remote code while off": ([f"model.path={write_model_dir(tmp_path / 'remote', remote_code=True)}"], "trust_remote_code=true"),
        "unknown task": (["suite.tasks=[mini_mcq]"], "did you mean mini_mc"),
        "group_size not positive": (["compression.group_size=0"], "group_size"),
        "calibration overlap": ([f"calibration.n_samples=4", "compression=gptq", f"suite.include_path={overlap_tasks(tmp_path, mini_tasks)}"],
                                "also an evaluated doc"),
        "missing data file": (["suite.tasks=[gsm8k]", f"suite.data_files.gsm8k={tmp_path / 'nope.jsonl'}"], "does not exist"),
        "malformed data file": (["suite.tasks=[gsm8k]", f"suite.data_files.gsm8k={bad_file}"], "lacks the field(s) answer"),
        "calibration text missing": (["compression=gptq", "calibration=text", f"calibration.path={tmp_path / 'none.txt'}"], "is not a file"),
    }


def overlap_tasks(tmp_path: Path, mini_tasks: Path) -> Path:
    """A copy of the mini tasks whose train split is its test split."""
    folder = tmp_path / "overlap"
    folder.mkdir()
    (folder / "data").symlink_to(mini_tasks / "data")
    for name in ("mini_mc.yaml", "mini_gen.yaml"):
        (folder / name).write_text((mini_tasks / name).read_text().replace("_train.jsonl", "_test.jsonl"))
    return folder


CASES = ["unknown hub id offline", "model path does not exist", "model dir without weights", "remote code while off",
         # an unknown task name scans lm-eval's whole registry for suggestions (the slowest case): slow tier
         pytest.param("unknown task", marks=pytest.mark.slow), "group_size not positive", "calibration overlap", "missing data file", "malformed data file",
         "calibration text missing"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_early_with_one_clear_line(case, mini_run_overrides, random_llama, mini_tasks, tmp_path, monkeypatch):
    overrides, message = bad_inputs(tmp_path, random_llama, mini_tasks)[case]
    evaluated = []
    monkeypatch.setattr(pipeline, "evaluate_side", lambda *a, **k: evaluated.append(1))
    with pytest.raises(ConfigError) as err:
        pipeline.run(compose(mini_run_overrides + overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not evaluated  # rejected before any evaluation


@pytest.mark.parametrize("override,message", [
    ("compression=tacq compression.keep_fraction=0.9", "compression.keep_fraction=0.9 is outside [0, 0.5]"),
    ("compression.bitz=3", "unknown config key 'compression.bitz' (did you mean compression.bits"),
])
def test_bad_override_is_one_line_from_the_command_line_check(override, message):
    """The command line's config check in-process (the exit code and stderr of `python -m flipbench`: slow test below
    and tests/test_bad_input.py)."""
    from flipbench import cli

    error = cli.precheck(override.split())
    assert error and message in error and "\n" not in error


@pytest.mark.slow
def test_bad_input_on_the_command_line_exits_2_without_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for override in ("compression.keep_fraction=0.9", "compression.bitz=3", "model=hf", "model.path=/no/such/dir"):
        args = [override] if override != "model=hf" else ["model=hf", "model.path=/no/such/dir"]
        if override == "model.path=/no/such/dir":
            continue
        done = subprocess.run([sys.executable, "-m", "flipbench", *args], cwd=tmp_path, capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 2, done.stderr[-1000:]
        assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("flipbench: error:")


def test_token_kl_reference_round_trip_and_torn_file_is_recomputed(tmp_path, caplog):
    import torch

    from flipbench.tokenkl import Reference

    def top_k(n):  # a top-2 row: log-probs, int32 ids, answer-token log-prob, tail log-mass
        return Reference(torch.randn(n, 2), torch.randint(0, 5, (n, 2), dtype=torch.int32), torch.randn(n), torch.randn(n))

    cache = BaselineCache(tmp_path)
    reference = {("gsm", "gsm", 0, "ab"): top_k(3), ("gsm", "gsm", 1, "cd"): top_k(0), ("gsm", "gsm", 7, "ef"): top_k(2)}
    cache.store_reference("k", reference, topk=2)
    loaded = cache.load_reference("k", topk=2)
    assert list(loaded) == list(reference)
    assert all(torch.equal(a, b) for key in reference for a, b in zip(loaded[key], reference[key]))
    assert cache.load_reference("k", topk=3) is None  # built for another k: recomputed
    assert cache.load_reference("k", max_bytes=10, topk=2) is None  # over the size budget: not even read
    full = {("gsm", "gsm", 0, "ab"): Reference(torch.randn(3, 5), None, torch.randn(3), torch.full((3,), float("-inf")))}
    cache.store_reference("k", full, topk=0)
    assert loaded is not None and cache.load_reference("k", topk=0)[("gsm", "gsm", 0, "ab")].ids is None
    path = tmp_path / "k" / "side.kl.pt"
    path.write_bytes(path.read_bytes()[:-16])  # torn write
    with caplog.at_level("WARNING"):
        assert cache.load_reference("k", topk=0) is None
    assert "recomputing" in caplog.text
    cache.store_reference("k", reference, topk=2)
    assert cache.load_reference("k", topk=2) is not None
    meta = tmp_path / "k" / "side.kl.json"
    meta.write_text(meta.read_text().replace('"layout": 2', '"layout": 1'))  # an older layout is never misread
    assert cache.load_reference("k", topk=2) is None
    cache.store("k", frame(), {})  # new baseline samples: the reference computed from the old ones goes
    assert cache.load_reference("k", topk=2) is None and not path.exists()
