"""Two phases: `flipbench collect` (one side or one shard into an artifact) and `flipbench compare` (no model).

The central check: two shards per side collected separately, then compared, reproduce the one-process run's
summary.csv and samples.parquet exactly (at eval.batch_size=1, where lm-eval's batching cannot differ)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from flipbench import artifact, shards
from flipbench.config import ConfigError
from tests.conftest import compose, mini_overrides

FEWSHOT = ["+suite.num_fewshot.mini_mc=2", "eval.batch_size=1"]  # random few-shot draws: shards must not change them


def _collect(overrides: list[str]) -> Path:
    from flipbench.collect import collect

    return collect(compose(overrides))


@pytest.fixture(scope="module")
def two_phase(random_llama, mini_tasks, tmp_path_factory):
    """(one-process run folder, compare run folder, artifact root) on the random Llama and the mini tasks."""
    from flipbench.compare import compare
    from flipbench.pipeline import run

    root = tmp_path_factory.mktemp("two_phase")
    common = mini_overrides(random_llama, mini_tasks, root / "results") + FEWSHOT + ["compression=rtn", "compression.bits=3"]
    one = run(compose(common + [f"output.run_dir={root}/one"]))
    art = root / "art"
    for i in (1, 0):  # any order
        _collect(common + ["side=baseline", f"shard={i}/2", f"output.artifact={art}/base"])
    for i in (0, 1):
        _collect(common + ["side=compressed", f"shard={i}/2", f"output.artifact={art}/comp",
                           f"output.baseline_artifact={art}/base"])
    two = compare([str(art / "base"), str(art / "comp"), f"output.run_dir={root}/two"])
    return one, two, art


def test_two_shards_per_side_reproduce_the_one_process_run_exactly(two_phase):
    one, two, art = two_phase
    pd.testing.assert_frame_equal(pd.read_csv(one / "summary.csv"), pd.read_csv(two / "summary.csv"), check_exact=True)
    a, b = pd.read_parquet(one / "samples.parquet"), pd.read_parquet(two / "samples.parquet")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    for column in ("task", "group", "doc_id", "filter", "prompt_hash", "pred_base", "pred_comp", "correct_base",
                   "correct_comp", "kl", "n_tokens"):
        assert a[column].equals(b[column]), column
    # token KL came through the artifacts (the compressed side scored the baseline's answers)
    gen = b[b["output_type"] == "generate_until"]
    assert gen["n_tokens"].gt(0).all() and gen["kl"].notna().all()
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["compared"]["baseline"]["shards"] == [[0, 2], [1, 2]]
    assert manifest["compression"]["method"] == "rtn"
    # the baseline artifact's size reaches the compared run as the one-process run records it (summary.csv's
    # baseline_bytes and model_bytes above are equal too)
    assert manifest["baseline_size"] == json.loads((one / "manifest.json").read_text())["baseline_size"]
    assert pd.read_csv(two / "summary.csv")["baseline_bytes"].gt(0).all()


def test_the_cached_baseline_is_an_artifact_compare_reads(two_phase, tmp_path):
    from flipbench.compare import compare

    one, _, art = two_phase
    key = json.loads((one / "manifest.json").read_text())["baseline_cache_key"]
    entry = one.parent / "results" / "cache" / key
    assert artifact.is_complete(entry)
    out = compare([str(entry), str(art / "comp"), f"output.run_dir={tmp_path}/from-cache"])
    pd.testing.assert_frame_equal(pd.read_csv(one / "summary.csv"), pd.read_csv(out / "summary.csv"), check_exact=True)


def test_each_shard_holds_half_of_every_task_and_subject(two_phase):
    _, _, art = two_phase
    frames = [pd.read_parquet(art / "base" / f"shard-{i}-of-2" / artifact.SAMPLES) for i in (0, 1)]
    docs = [set(zip(f["task"], f["group"], f["doc_id"])) for f in frames]
    assert not docs[0] & docs[1]  # disjoint
    # mini_mc: 12 docs, subjects alpha/beta (6 each) -> 3 + 3 per shard; mini_gen: 6 docs -> 3 + 3
    counts = [Counter((t, g) for t, g, _ in d) for d in docs]
    assert counts[0] == counts[1] == Counter({("mini_mc", "alpha"): 3, ("mini_mc", "beta"): 3, ("mini_gen", "mini_gen"): 3})


def test_compare_loads_no_model(two_phase, monkeypatch, tmp_path):
    import transformers

    from flipbench import models
    from flipbench.compare import compare

    def refuse(*args, **kwargs):
        raise AssertionError("compare loaded a model")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    _, _, art = two_phase
    out = compare([str(art / "base"), str(art / "comp"), f"output.run_dir={tmp_path}/again", "gate.max_flips=0"])
    assert json.loads((out / "manifest.json").read_text())["gate"]["verdict"] in ("PASS", "FAIL")


def test_shards_that_do_not_tile_are_refused_naming_the_shard(two_phase, tmp_path):
    import shutil

    from flipbench.compare import compare

    _, _, art = two_phase
    only_one = tmp_path / "half"
    shutil.copytree(art / "comp" / "shard-0-of-2", only_one / "shard-0-of-2")
    with pytest.raises(ConfigError, match=r"shard 1/2 is missing"):
        compare([str(art / "base"), str(only_one)])
    twice = tmp_path / "twice"
    shutil.copytree(art / "comp", twice / "a")
    shutil.copytree(art / "comp" / "shard-0-of-2", twice / "b")
    with pytest.raises(ConfigError, match=r"shard 0/2 is given twice"):
        compare([str(art / "base"), f"{twice / 'a'},{twice / 'b'}"])
    with pytest.raises(ConfigError, match=r"holds neither a flipbench artifact nor lm-eval output"):
        compare([str(art / "base"), str(tmp_path)])
    with pytest.raises(ConfigError, match=r"suite.limit cannot change after collect"):
        compare([str(art / "base"), str(art / "comp"), "suite.limit=3"])


def test_sides_with_different_settings_are_refused(two_phase, random_llama, mini_tasks, tmp_path):
    from flipbench.compare import compare

    _, _, art = two_phase
    other = mini_overrides(random_llama, mini_tasks, tmp_path / "results") + ["eval.batch_size=1"]  # 0-shot mini_mc
    folder = _collect(other + ["side=compressed", "suite.limit=4", f"output.artifact={tmp_path}/few"])
    with pytest.raises(ConfigError, match=r"different task configs \(mini_mc"):
        compare([str(art / "base"), str(folder)])


def test_shard_assignment_is_deterministic_and_balanced():
    class Task:
        def __init__(self, docs):
            self.eval_docs = docs

    docs = [{"q": i, "subject": "ab"[i % 3 == 0]} for i in range(50)]  # 17 'b', 33 'a'
    tasks = {"t": Task(docs)}
    parts = [shards.assign(tasks, {"t": None}, f"{i}/4")["t"] for i in range(4)]
    assert sorted(sum(parts, [])) == list(range(50))  # every doc once
    for subject in "ab":
        sizes = [sum(docs[i]["subject"] == subject for i in part) for part in parts]
        assert max(sizes) - min(sizes) <= 1, sizes
    assert parts == [shards.assign(tasks, {"t": None}, f"{i}/4")["t"] for i in range(4)]
    assert shards.assign(tasks, {"t": 10}, "0/4")["t"] == sorted(shards.assign(tasks, {"t": 10}, "0/4")["t"])
    assert all(i < 10 for i in shards.assign(tasks, {"t": 10}, "3/4")["t"])
    with pytest.raises(ConfigError, match=r"shard=4/4 is out of range"):
        shards.assign(tasks, {"t": None}, "4/4")
    with pytest.raises(ConfigError, match=r"is not I/N"):
        shards.assign(tasks, {"t": None}, "half")


def test_compare_cli_exit_codes(two_phase, tmp_path, capsys):
    """Exit 2 with one line for a missing side, 3 when the gate fails (0 when it passes), through the console entry."""
    from flipbench.cli import compare_main

    _, _, art = two_phase
    assert compare_main([str(art / "base")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "needs two sides" in err
    code = compare_main([str(art / "base"), str(art / "comp"), f"output.run_dir={tmp_path}/f", "gate.max_flips=0"])
    summary = pd.read_csv(tmp_path / "f" / "summary.csv")
    expected = 3 if (summary.loc[summary["group"] == "all", "flips"] > 0).any() else 0
    assert code == expected and "compare complete" in capsys.readouterr().out


def test_an_upgraded_library_evaluates_the_baseline_again_and_says_which(random_llama, mini_tasks, tmp_path, monkeypatch,
                                                                         caplog):
    import importlib.metadata

    from flipbench.pipeline import run

    overrides = mini_overrides(random_llama, mini_tasks, tmp_path / "results") + ["compression=none", "suite.limit=2",
                                                                                 "eval.token_kl=false", "output.plots=false"]
    first = run(compose(overrides))
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "99.0" if name == "transformers" else real(name))
    with caplog.at_level("INFO", logger="flipbench"):
        second = run(compose(overrides))
    hits = [json.loads((d / "manifest.json").read_text())["baseline_cache_hit"] for d in (first, second)]
    assert hits == [False, False]
    assert "baseline cache: transformers changed since the cached baseline" in caplog.text

    from flipbench import cache

    def scanned(*args):
        raise AssertionError("a cache hit needs no scan of the other entries")

    monkeypatch.setattr(cache.BaselineCache, "changed_libraries", scanned)
    third = run(compose(overrides))
    assert json.loads((third / "manifest.json").read_text())["baseline_cache_hit"] is True


def test_a_baseline_collected_through_a_server_pairs_with_an_hf_compressed_side(two_phase, random_llama, mini_tasks,
                                                                               tmp_path):
    """The baseline evaluated by an OpenAI-compatible server (no HF weights loaded by collect), its token-KL reference
    from the server's top-k log-probs; the compressed side in-process with the baseline artifact; compare gives the
    one-process run's counts."""
    pytest.importorskip("tenacity", reason="engine=server needs lm-eval's API extras")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flipbench.compare import compare
    from tests.completions_server import serve

    one, _, _ = two_phase
    root = one.parent
    common = mini_overrides(random_llama, mini_tasks, root / "results") + FEWSHOT + ["compression=rtn", "compression.bits=3"]
    model = AutoModelForCausalLM.from_pretrained(random_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(random_llama)
    with serve(model, tokenizer, str(random_llama)) as (url, backend):
        base = _collect(common + ["side=baseline", "engine=server", f"engine.base_url={url}/completions",
                                  f"output.artifact={tmp_path}/base"])
        assert backend.requests > 0
    manifest = json.loads((base / artifact.MANIFEST).read_text())
    assert manifest["engine"]["name"] == "server" and "load_model" not in manifest["stage_seconds"]
    assert manifest["eval"]["token_kl_topk"] == 20  # the engine's max_logprobs caps the reference
    comp = _collect(common + ["side=compressed", f"output.artifact={tmp_path}/comp", f"output.baseline_artifact={base}"])
    out = compare([str(base), str(comp), f"output.run_dir={tmp_path}/run"])
    a, b = pd.read_csv(one / "summary.csv"), pd.read_csv(out / "summary.csv")
    for column in ("n", "acc_base", "acc_comp", "flips", "lost", "gained", "label_loyalty"):
        pd.testing.assert_series_equal(a[column], b[column], check_exact=False, rtol=0, atol=0), column
    gen = pd.read_parquet(out / "samples.parquet").query("output_type == 'generate_until'")
    assert gen["n_tokens"].gt(0).all() and gen["kl"].notna().all()
    assert gen["prefill_n_tokens"].gt(0).all() and gen["prefill_kl"].notna().all()  # the prompt's part, via the server
