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

from flipbench import artifact, foreign, trajectory
from flipbench.config import ConfigError
from tests.conftest import compose

SUMMARY_KEYS = ["task", "group", "metric", "filter"]
SIDE_ONLY = ["method", "bits", "avg_bits", "sparsity", "params_kept", "model_bytes", "baseline_bytes"]  # what the side was


@pytest.fixture
def hooked(monkeypatch):
    """artifact.load_side and artifact.check_compatible with the foreign hook in front, as the lead wires it."""
    load, check = artifact.load_side, artifact.check_compatible

    def load_side(paths, what):
        return foreign.load_foreign(paths, what) or load(paths, what)

    def check_compatible(base, comp):
        foreign.check_compatible(base, comp)
        check(base, comp)

    monkeypatch.setattr(artifact, "load_side", load_side)
    monkeypatch.setattr(artifact, "check_compatible", check_compatible)


def _compare(argv: list[str]) -> Path:
    from flipbench.compare import compare

    return compare(argv)


@pytest.fixture(autouse=True)
def results_root(tmp_path, monkeypatch):
    """Runs made here point tmp_path/results/latest at themselves, not the checkout's results/latest."""
    (tmp_path / "results").mkdir()
    monkeypatch.chdir(tmp_path)


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
    # lm-eval's logs carry no tokenizer: of the trajectory columns only gen_identical (string identity) is compared
    tokens = [c for c in trajectory.SUMMARY if c != "gen_identical"]
    pd.testing.assert_frame_equal(a.drop(columns=SIDE_ONLY + tokens), b.drop(columns=SIDE_ONLY + tokens),
                                  check_exact=True)
    x, y = pd.read_parquet(one / "samples.parquet"), pd.read_parquet(two / "samples.parquet")
    for column in ("task", "group", "doc_id", "filter", "doc_hash", "prompt_hash", "prompt", "target", "pred_base",
                   "pred_comp", "correct_base", "correct_comp", "kl", "lm_correct_base", "lm_correct_comp"):
        assert x[column].equals(y[column]), column
    assert [list(v) for v in x["ll_comp"]] == [list(v) for v in y["ll_comp"]]
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["compared"]["compressed"]["model"] == "tiny"
    heads = b[b["headline"] & (b["group"] == "all")].set_index("task")
    assert heads["flips"].sum() > 0 and heads.loc["synth_arc", "kl_mean"] > 0  # not a vacuous equality


# ---------------------------------------------------------------- hand-built lm-eval logs

DATE = "2026-01-02T03-04-05.000001"
LN2 = math.log(2)
# toy_mc: 3 choices, gold index per doc; choice log-likelihoods ln p, so softmax(ll) = p exactly
MC_GOLD = [0, 1, 2, 0]
MC_P = {"base": [[.5, .25, .25], [.5, .25, .25], [.25, .25, .5], [.25, .5, .25]],
        "comp": [[.25, .5, .25], [.25, .5, .25], [.25, .25, .5], [.25, .25, .5]]}
# toy_gen (filter strict-match): the filtered answer and lm-eval's exact_match per doc
GEN = {"base": [("5", 1.0), ("3", 0.0)], "comp": [("[invalid]", 0.0), ("3", 0.0)]}


def _mc_sample(doc_id: int, p: list[float], metrics=("acc",)) -> dict:
    ll = [math.log(v) for v in p]
    doc = {"question": f"q{doc_id}", "choices": ["red", "green", "blue"], "answer": MC_GOLD[doc_id]}
    pred = int(np.argmax(ll))
    sample = {"doc_id": doc_id, "doc": doc, "target": str(MC_GOLD[doc_id]),
              "arguments": {f"gen_args_{k}": {"arg_0": f"Q: q{doc_id}\nA:", "arg_1": f" {c}"}
                            for k, c in enumerate(doc["choices"])},
              "resps": [[[str(v), "False"]] for v in ll], "filtered_resps": [[str(v), "False"] for v in ll],
              "filter": "none", "metrics": list(metrics), "doc_hash": f"d{doc_id}", "prompt_hash": f"p{doc_id}",
              "target_hash": "t"}
    sample.update({m: float(pred == MC_GOLD[doc_id]) for m in metrics})
    return sample


def _gen_sample(doc_id: int, answer: str, em: float) -> dict:
    return {"doc_id": doc_id, "doc": {"question": f"g{doc_id}"}, "target": f"#### {5 if doc_id == 0 else 4}",
            "arguments": {"gen_args_0": {"arg_0": f"Q: g{doc_id}\nA:", "arg_1": {"until": ["\n"]}}},
            "resps": [[f" it is {answer}"]], "filtered_resps": [answer], "filter": "strict-match",
            "metrics": ["exact_match"], "doc_hash": f"gd{doc_id}", "prompt_hash": f"gp{doc_id}", "target_hash": "t",
            "exact_match": em}


def write_log(folder: Path, side: str, *, nshot: int = 0, version: str = "0.4.13", mc_metrics=("acc",),
              docs=range(4), nested: str | None = "org__model") -> Path:
    """An lm-eval --output_path folder (nested one level by model name, as the CLI writes it)."""
    where = folder / nested if nested else folder
    where.mkdir(parents=True)
    mc = [_mc_sample(i, MC_P[side][i], mc_metrics) for i in docs]
    gen = [_gen_sample(i, *GEN[side][i]) for i in range(2)]
    configs = {"toy_mc": {"task": "toy_mc", "output_type": "multiple_choice", "target_delimiter": " ",
                          "num_fewshot": nshot, "metric_list": [{"metric": m} for m in mc_metrics]},
               "toy_gen": {"task": "toy_gen", "output_type": "generate_until", "target_delimiter": " ",
                           "num_fewshot": 0, "filter_list": [{"name": "strict-match", "filter": []}]}}
    results = {"results": {}, "group_subtasks": {"toy_mc": [], "toy_gen": []}, "configs": configs,
               "versions": {"toy_mc": 1.0, "toy_gen": 1.0}, "n-shot": {"toy_mc": nshot, "toy_gen": 0},
               "config": {"model": "hf"}, "model_name": f"org/{side}-model", "lm_eval_version": version}
    (where / f"results_{DATE}.json").write_text(json.dumps(results))
    for task, rows in (("toy_mc", mc), ("toy_gen", gen)):
        (where / f"samples_{task}_{DATE}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture
def logs(tmp_path):
    return write_log(tmp_path / "base", "base"), write_log(tmp_path / "comp", "comp")


def _heads(run_dir: Path) -> pd.DataFrame:
    summary = pd.read_csv(run_dir / "summary.csv")
    return summary[summary["headline"] & (summary["group"] == "all")].set_index("task")


def test_hand_built_lm_eval_logs_pin_every_number(logs, hooked, tmp_path):
    run_dir = _compare([str(logs[0]), str(logs[1]), f"output.run_dir={tmp_path / 'run'}", "output.plots=false",
                        "gate.max_flips=0.3"])
    heads = _heads(run_dir)
    mc = heads.loc["toy_mc"]
    # doc 0 right -> wrong, doc 1 wrong -> right, doc 2 right both, doc 3 wrong -> another wrong answer
    assert (mc["metric"], mc["n"], mc["acc_base"], mc["acc_comp"]) == ("acc", 4, 0.5, 0.5)
    assert (mc["flips"], mc["lost"], mc["gained"], mc["label_loyalty"]) == (0.5, 0.25, 0.25, 0.25)
    # KL(p_b || p_c): doc 0 and 1: .5 ln(.5/.25) + .25 ln(.25/.5) = .25 ln 2; doc 2: 0; doc 3: .25 ln 2
    assert mc["kl_mean"] == pytest.approx(0.75 * LN2 / 4, abs=1e-12) and mc["kl_scope"] == "choice"
    assert mc["kl_max"] == pytest.approx(0.25 * LN2, abs=1e-12)
    gen = heads.loc["toy_gen"]
    assert (gen["metric"], gen["filter"], gen["n"], gen["acc_base"], gen["acc_comp"]) == ("exact_match", "strict-match", 2, 0.5, 0.0)
    assert (gen["flips"], gen["lost"], gen["flips_to_invalid"], gen["answer_agreement"]) == (0.5, 0.5, 0.5, 0.5)
    samples = pd.read_parquet(run_dir / "samples.parquet")
    assert samples.loc[samples["task"] == "toy_mc", "choices"].map(list).tolist()[0] == ["red", "green", "blue"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["gate"]["verdict"] == "FAIL" and manifest["compression"]["method"] == "comp-model"
    assert "toy_gen: token KL is not available from lm-eval logs" in (run_dir / "report.md").read_text()


def test_one_samples_file_reads_its_results_json_beside_it(logs):
    folder = logs[0] / "org__model"
    side = foreign.load_foreign([str(folder / f"samples_toy_mc_{DATE}.jsonl")], "baseline")
    assert side.manifest["tasks"]["toy_mc"]["num_fewshot"] == 0 and side.manifest["lm_eval"] == "0.4.13"
    assert side.samples["pred"].tolist() == ["0", "0", "2", "1"] and side.samples["correct"].tolist() == [1, 0, 1, 0]


def test_flipbench_artifacts_fall_through(tmp_path):
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / artifact.MANIFEST).write_text("{}")
    assert foreign.load_foreign([str(tmp_path / "art")], "baseline") is None


@pytest.mark.parametrize("change, message", [
    (dict(nshot=5), "toy_mc.num_fewshot (0 vs 5)"),
    (dict(version="0.4.9"), "different lm-eval versions ('0.4.13' vs '0.4.9')"),
    (dict(mc_metrics=("acc", "acc_norm")), "toy_mc: acc_norm is logged on the compressed side only"),
    (dict(docs=range(3)), "toy_mc doc 3 is on the baseline only (1 docs differ)"),
])
def test_lm_eval_logs_that_differ_are_refused_in_one_line(tmp_path, hooked, capsys, change, message):
    from flipbench.cli import compare_main

    base, comp = write_log(tmp_path / "base", "base"), write_log(tmp_path / "comp", "comp", **change)
    assert compare_main([str(base), str(comp), f"output.run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_bad_lm_eval_input_is_refused(tmp_path, logs, hooked):
    empty = tmp_path / "samples_toy_mc_2026-01-01T00-00-00.0.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        foreign.load_foreign([str(empty)], "baseline")
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"doc_id": 0, "pred": "A", "gold": "A"}) + "\n")
    with pytest.raises(ConfigError, match=r"baseline: the paths mix formats \(lm-eval log and per-item file\)"):
        foreign.load_foreign([str(logs[0]), str(items)], "baseline")
    with pytest.raises(ConfigError, match="does not exist"):
        foreign.load_foreign([str(tmp_path / "nothing")], "baseline")
    twice = write_log(tmp_path / "twice", "base", nested=None)
    (twice / "samples_toy_mc_2026-02-03T00-00-00.5.jsonl").write_text((twice / f"samples_toy_mc_{DATE}.jsonl").read_text())
    with pytest.raises(ConfigError, match="holds 2 runs"):
        foreign.load_foreign([str(twice)], "baseline")


# ---------------------------------------------------------------- per-item files

ITEM_P = {"base": [("A", [.7, .2, .1]), ("B", [.4, .6, 0.0]), ("C", [.1, .1, .8])],
          "comp": [("B", [.3, .6, .1]), ("A", [.55, .45, 0.0]), ("C", [.2, .2, .6])]}
ITEM_GOLD = ["A", "A", "C"]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _items(tmp_path: Path, side: str, **extra) -> Path:
    return _jsonl(tmp_path / f"{side}.jsonl", [{"doc_id": i, "pred": pred, "gold": ITEM_GOLD[i], "probs": p, **extra}
                                                for i, (pred, p) in enumerate(ITEM_P[side])])


def test_per_item_files_with_probs_give_choice_kl_by_hand(tmp_path, hooked):
    run_dir = _compare([str(_items(tmp_path, "base")), str(_items(tmp_path, "comp")),
                        f"output.run_dir={tmp_path / 'run'}", "output.plots=false"])
    row = _heads(run_dir).loc["items"]
    # doc 0 right -> wrong (A -> B), doc 1 wrong -> right (B -> A), doc 2 right both (C)
    assert (row["n"], row["acc_base"], row["acc_comp"], row["flips"], row["lost"], row["gained"]) == (
        3, 2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3)
    assert row["label_loyalty"] == pytest.approx(1 / 3) and row["kl_scope"] == "choice"
    kl = [.7 * math.log(.7 / .3) + .2 * math.log(.2 / .6),  # + .1 ln(.1/.1) = 0
          .4 * math.log(.4 / .55) + .6 * math.log(.6 / .45),  # + 0 ln(0/0) = 0
          2 * .1 * math.log(.1 / .2) + .8 * math.log(.8 / .6)]
    assert row["kl_mean"] == pytest.approx(sum(kl) / 3, abs=1e-12) and row["kl_max"] == pytest.approx(kl[0], abs=1e-12)
    samples = pd.read_parquet(run_dir / "samples.parquet")
    assert samples["choices"].map(list).iloc[0] == ["A", "B", "C"] and samples["prompt"].eq("").all()
    notes = json.loads((run_dir / "manifest.json").read_text())["data_notes"]
    assert any("prompts are not checked" in n for n in notes)


def _csv(path: Path, rows: list[tuple]) -> Path:
    path.write_text("task,group,doc_id,pred\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_per_item_csv_with_an_items_file_of_gold_answers_and_no_probs(tmp_path, hooked):
    gold = _jsonl(tmp_path / "gold.jsonl", [{"task": "quiz", "doc_id": i, "gold": g} for i, g in enumerate("ABCD")])
    base = _csv(tmp_path / "base.csv", [("quiz", "x", 0, "A"), ("quiz", "x", 1, "B"), ("quiz", "y", 2, "D"),
                                        ("quiz", "y", 3, "D")])
    comp = _csv(tmp_path / "comp.csv", [("quiz", "x", 0, "A"), ("quiz", "x", 1, "C"), ("quiz", "y", 2, "C"),
                                        ("quiz", "y", 3, "A")])
    run_dir = _compare([f"{base},{gold}", f"{comp},{gold}", f"output.run_dir={tmp_path / 'run'}", "output.plots=false"])
    summary = pd.read_csv(run_dir / "summary.csv").set_index(["task", "group"])
    whole = summary.loc[("quiz", "all")]
    # base right on 0, 1, 3; comp right on 0, 2: lost 1 and 3, gained 2; answers agree on doc 0 only
    assert (whole["n"], whole["acc_base"], whole["acc_comp"], whole["flips"], whole["lost"], whole["gained"]) == (
        4, 0.75, 0.5, 0.75, 0.5, 0.25)
    assert whole["label_loyalty"] == 0.25 and math.isnan(whole["kl_mean"])
    assert summary.loc[("quiz", "x"), "flips"] == 0.5 and summary.loc[("quiz", "y"), "flips"] == 1.0
    report = (run_dir / "report.md").read_text()
    assert "choice KL is not available" in report


@pytest.mark.parametrize("rows, message", [
    ([], "is empty"),
    ([{"doc_id": 0, "pred": "A"}], "items doc 0 has no gold answer"),
    ([{"doc_id": 0, "pred": "E", "gold": "A", "probs": [.5, .5]}], "pred 'E' is not among the choices"),
    ([{"doc_id": 0, "pred": "A", "gold": "A"}] * 2, "items doc 0 appears twice"),
    ([{"doc_id": 0, "pred": "A", "gold": "A", "probs": [1, 0]}, {"doc_id": 1, "pred": "A", "gold": "A"}],
     "gives probs on some rows only"),
])
def test_bad_per_item_files_are_refused(tmp_path, rows, message):
    with pytest.raises(ConfigError, match=message):
        foreign.load_foreign([str(_jsonl(tmp_path / "side.jsonl", rows))], "baseline")


def test_per_item_sides_that_differ_are_refused(tmp_path, hooked):
    from flipbench.cli import compare_main

    base = _items(tmp_path, "base")
    fewer = _jsonl(tmp_path / "fewer.jsonl", [json.loads(line) for line in _items(tmp_path, "comp").read_text().splitlines()[:2]])
    no_probs = _jsonl(tmp_path / "noprobs.jsonl", [{"doc_id": i, "pred": "A", "gold": g} for i, g in enumerate(ITEM_GOLD)])
    other_gold = _jsonl(tmp_path / "gold.jsonl", [{**json.loads(line), "gold": "B"} if i == 2 else json.loads(line)
                                                  for i, line in enumerate(_items(tmp_path, "comp").read_text().splitlines())])
    for comp, message in ((fewer, "items doc 2 is on the baseline only"),
                          (no_probs, r"choice probabilities \(probs\) are given on the baseline only"),
                          (other_gold, r"items doc 2: the two sides give different gold answers \('C' vs 'B'\)"),
                          (tmp_path / "gone.jsonl", "does not exist")):
        with pytest.raises(ConfigError, match=message):
            _compare([str(base), str(comp), f"output.run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="baseline was given as per-item file and the compressed side as lm-eval log"):
        _compare([str(base), str(write_log(tmp_path / "log", "comp")), f"output.run_dir={tmp_path / 'run'}"])
    assert compare_main([str(base), str(fewer), f"output.run_dir={tmp_path / 'run'}"]) == 2
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- several compressed sides: the sweep view


def test_compare_many_writes_the_sweep_tables_of_its_members(tmp_path, hooked):
    from flipbench.compare_many import compare_many, verdicts

    base, comp = _items(tmp_path, "base"), _items(tmp_path, "comp")
    same = _jsonl(tmp_path / "same.jsonl", [json.loads(line) for line in base.read_text().splitlines()])
    sweep_dir, runs = compare_many(str(base), [str(comp), str(same)],
                                   [f"output.run_dir={tmp_path / 'sweep'}", "output.plots=false", "gate.max_flips=0.5"])
    assert [r.name for r in runs] == ["0-comp", "1-same"] and sweep_dir == tmp_path / "sweep"
    table = pd.read_csv(sweep_dir / "sweep_summary.csv").set_index("run")
    assert table.loc["0-comp", "flips"] == pytest.approx(2 / 3) and table.loc["1-same", "flips"] == 0
    assert list(table["method"]) == ["comp", "same"]
    overlap = pd.read_csv(sweep_dir / "sweep_overlap.csv").iloc[0]
    # comp flips docs 0 and 1, same flips none; between them: comp right & same wrong on doc 1, the reverse on doc 0
    assert (overlap["n"], overlap["flips_a"], overlap["flips_b"], overlap["flips_both"]) == (3, 2, 0, 0)
    assert (overlap["a_right_b_wrong"], overlap["a_wrong_b_right"]) == (1, 1)
    assert (sweep_dir / "sweep_correlation.csv").is_file() and (sweep_dir / "sweep_report.md").is_file()
    assert verdicts(runs) == {"0-comp": "FAIL", "1-same": "PASS"}


def test_compare_many_checks_every_side_before_writing(tmp_path, hooked):
    from flipbench.compare_many import compare_many

    base = _items(tmp_path, "base")
    fewer = _jsonl(tmp_path / "fewer.jsonl", [json.loads(line) for line in base.read_text().splitlines()[:2]])
    with pytest.raises(ConfigError, match="items doc 2 is on the baseline only"):
        compare_many(str(base), [str(base), str(fewer)], [f"output.run_dir={tmp_path / 'sweep'}"])
    assert not (tmp_path / "sweep").exists()


def test_subjects_of_a_subject_group_are_reported_as_one_task(tmp_path):
    """MMLU-like: leaves under mmlu -> mmlu_stem are reported as task mmlu, group = subject, category = alias."""
    where = tmp_path / "run"
    where.mkdir()
    results = {"group_subtasks": {"mmlu": ["mmlu_stem"], "mmlu_stem": ["mmlu_astronomy"]},
               "groups": {"mmlu": {"alias": "mmlu"}, "mmlu_stem": {"alias": " - stem"}},
               "configs": {"mmlu_astronomy": {"output_type": "multiple_choice", "target_delimiter": " "}},
               "n-shot": {"mmlu_astronomy": 5}, "versions": {"mmlu_astronomy": 1.0}, "lm_eval_version": "0.4.13"}
    (where / f"results_{DATE}.json").write_text(json.dumps(results))
    rows = [_mc_sample(i, MC_P["base"][i]) for i in range(2)]
    (where / f"samples_mmlu_astronomy_{DATE}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    side = foreign.load_foreign([str(where)], "baseline")
    assert side.samples[["task", "group", "category"]].drop_duplicates().values.tolist() == [["mmlu", "astronomy", "stem"]]
    assert side.manifest["suite"]["num_fewshot"] == {"mmlu": 5} and side.manifest["docs"] == {"mmlu": 2}


@pytest.mark.parametrize("config, results, expected", [
    ({"target_delimiter": " "}, {}, " "),
    ({"target_delimiter": " "}, {"chat_template_sha": "abc"}, ""),  # lm-eval drops it under a chat template
    ({"target_delimiter": " ", "gen_prefix": "Answer:"}, {"chat_template": "t"}, " "),  # unless a gen_prefix needs it
    ({"target_delimiter": " ", "gen_prefix": "Answer: "}, {"chat_template": "t"}, ""),
])
def test_choices_are_the_continuations_without_lm_evals_delimiter(config, results, expected):
    assert foreign._delimiter(config, results) == expected


def test_acc_mutual_info_keeps_the_unconditional_log_likelihoods(tmp_path):
    sample = _mc_sample(0, [.5, .25, .25], metrics=("acc", "acc_mutual_info"))
    uncond = [math.log(v) for v in (.25, .5, .25)]
    sample["arguments"].update({f"gen_args_{3 + k}": {"arg_0": "", "arg_1": f" {c}"}
                                for k, c in enumerate(["red", "green", "blue"])})
    sample["filtered_resps"] += [[str(v), "False"] for v in uncond]
    path = tmp_path / f"samples_toy_mc_{DATE}.jsonl"
    path.write_text(json.dumps(sample) + "\n")
    row = foreign.load_foreign([str(path)], "baseline").samples.iloc[0]
    assert list(row["choices"]) == ["red", "green", "blue"] and row["ll_uncond"] == pytest.approx(uncond)
    assert row["ll"] == pytest.approx([math.log(v) for v in (.5, .25, .25)]) and row["metric"] == "acc"
