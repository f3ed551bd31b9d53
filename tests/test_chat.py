"""Chat templates and reasoning markers: the same prompts on both sides, stated in the run, refused when missing."""

from __future__ import annotations

import json
import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from flipbench import evaluate
from flipbench.config import ConfigError
from tests.conftest import compose, mini_overrides

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def chat_llama(random_llama, tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("chat_llama")
    shutil.copytree(random_llama, folder, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("mode,has,apply", [("true", True, True), ("auto", True, True), ("auto", False, False),
                                            ("false", True, False)])
def test_chat_settings(mode, has, apply):
    suite = SimpleNamespace(chat_template=mode, system_prompt="Be brief.", fewshot_as_multiturn=True)
    tokenizer = SimpleNamespace(chat_template=TEMPLATE if has else None)
    out = evaluate.chat_settings(suite, tokenizer, "m")
    assert out["apply_chat_template"] is apply and out["system_instruction"] == ("Be brief." if apply else None)


def test_a_chat_template_asked_for_but_missing_is_refused_before_any_evaluation(random_llama, mini_tasks, tmp_path,
                                                                                monkeypatch):
    from flipbench import pipeline

    monkeypatch.setattr(pipeline, "evaluate_side", lambda *a, **k: pytest.fail("evaluated"))
    with pytest.raises(ConfigError, match=r"suite.chat_template=true, but the tokenizer of .* has no chat template"):
        pipeline.run(compose(mini_overrides(random_llama, mini_tasks, tmp_path / "r") + ["suite.chat_template=true"]))


def test_chat_prompts_on_both_sides_and_stated(chat_llama, mini_tasks, tmp_path, caplog):
    from flipbench.pipeline import run

    overrides = mini_overrides(chat_llama, mini_tasks, tmp_path / "r") + [
        "suite.chat_template=true", "suite.system_prompt=Answer briefly.", "+suite.num_fewshot.mini_mc=1",
        "suite.limit=4", "suite.think_end='</think>'", "output.plots=false", "compression.bits=8"]
    with caplog.at_level(logging.WARNING, logger="flipbench"):
        run_dir = run(compose(overrides))
    samples = pd.read_parquet(run_dir / "samples.parquet")
    # the template's own markers, the system message first, the one-shot example as an earlier turn
    for prompt in samples["prompt"]:
        assert prompt.startswith("<|system|>Answer briefly.\n<|user|>") and prompt.endswith("<|assistant|>")
    mc = samples[samples["task"] == "mini_mc"]["prompt"].iloc[0]
    assert mc.count("<|user|>") == 2 and mc.count("<|assistant|>") == 2
    assert "Prompts" not in caplog.text and "appears in none of the baseline side's" in caplog.text
    report = (run_dir / "report.md").read_text()
    assert "prompts: chat template (true), system prompt set, few-shot as turns; answers after '</think>'" in report
    key = json.loads((run_dir / "manifest.json").read_text())["baseline_cache_key"]
    entry = json.loads((run_dir.parent.parent / "cache" / key / "artifact.json").read_text())
    assert entry["key"]["chat"] == ["true", "Answer briefly.", True, "</think>"]


def test_the_pre_check_renders_what_the_evaluation_sends(chat_llama, mini_tasks, tmp_path):
    """TokenizerChat (no model) renders the prompts lm-eval's HFLM renders through its apply_chat_template."""
    from flipbench import side
    from flipbench.config import to_typed

    cfg = to_typed(compose(mini_overrides(chat_llama, mini_tasks, tmp_path / "r") + [
        "suite.chat_template=true", "suite.system_prompt=S.", "+suite.num_fewshot.mini_mc=2", "suite.limit=3"]))
    plan = side.preflight(cfg)
    task_objs, tokenizer, _ = side.prepare(cfg, plan)
    chat = evaluate.chat_settings(cfg.suite, tokenizer, "m")
    evaluate.build_requests(task_objs["mini_mc"], "mini_mc", 3, None, cfg.eval.seed, chat, tokenizer)
    rendered = sorted({inst.arguments[0] for inst in task_objs["mini_mc"].instances})
    from flipbench import models

    model, tokenizer = models.load_model(cfg.model, tokenizer=tokenizer)
    frame = side.evaluate_side(model, tokenizer, task_objs, plan, cfg)
    assert sorted(set(frame.loc[frame["task"] == "mini_mc", "prompt"])) == rendered


def test_reasoning_span_lengths_from_the_raw_generations(random_llama, mini_tasks, tmp_path, caplog):
    """The random Llama writes "gre" in some of its generations (read from them): with suite.think_end=gre, each doc's
    span is the tokens before the marker, worked out from the same greedy generations evaluated without a marker."""
    from flipbench import models, side
    from flipbench.config import to_typed

    def evaluate_with(*extra):
        cfg = to_typed(compose(mini_overrides(random_llama, mini_tasks, tmp_path / "r") + [
            "suite.tasks=[mini_gen]", "suite.limit=6", *extra]))
        plan = side.preflight(cfg)
        task_objs, tokenizer, _ = side.prepare(cfg, plan)
        model, tokenizer = models.load_model(cfg.model, tokenizer=tokenizer)
        return side.evaluate_side(model, tokenizer, task_objs, plan, cfg), tokenizer

    plain, tokenizer = evaluate_with()
    with caplog.at_level(logging.INFO, logger="flipbench"):
        marked, _ = evaluate_with("suite.think_end=gre")
    plain, marked = (f.drop_duplicates("doc_id").set_index("doc_id") for f in (plain, marked))
    assert "think_len" not in plain  # no marker, no span columns
    closed = [doc for doc, text in plain["response"].items() if "gre" in text]
    assert 0 < len(closed) < len(plain)  # both cases present
    for doc, text in plain["response"].items():  # the plain response is the raw generation cut at the stop "\n"
        row = marked.loc[doc]
        if doc in closed:
            span = len(tokenizer(text[:text.rfind("gre")], add_special_tokens=False)["input_ids"])
            assert (row["think_closed"], row["think_len"], row["think_cut"]) == (1.0, span, 0.0)
            assert row["response"] == text.split("gre")[-1].lstrip()  # lm-eval's answer: what follows the marker
        else:
            ran_out = len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= 6  # mini_gen's max_gen_toks
            assert row["think_closed"] == 0.0 and np.isnan(row["think_len"]) and row["think_cut"] == float(ran_out)
            assert row["response"] == text
    assert f"suite.think_end: {len(closed)} of {len(plain)} side generations held the marker" in caplog.text


def test_think_markers_capture_the_raw_generation_on_every_engine_kind():
    """A model that strips through lm-eval's post-processing (HF, vLLM) and one that returns raw text (lm-eval's
    completions model, engine=server): both answer what follows the marker, and both raw generations are kept."""
    from lm_eval.models import huggingface

    from flipbench import side

    request = lambda doc: SimpleNamespace(task_name="t", doc_id=doc, args=("ctx", {"until": ["\n"]}))  # noqa: E731

    class Stripping:  # as HFLM: post-processes each raw generation itself
        def generate_until(self, requests):
            return [huggingface.postprocess_generated_text("a b </t> 42\nrest", ["\n"], self.think_end_token)
                    for _ in requests]

    class Raw:  # as LocalCompletionsAPI: the server's text, nothing stripped
        def generate_until(self, requests):
            return ["a b </t> 7" for _ in requests]

    for lm, answer, raw in ((Stripping(), "42", "a b </t> 42\nrest"), (Raw(), "7", "a b </t> 7")):
        lm.think_end_token = "</t>"
        with side.think_markers(lm, "</t>", "x") as captured:
            out = lm.generate_until([request(0), request(1)])
        assert out == [answer, answer] and all(type(a) is str for a in out)
        assert captured == {("t", 0): (raw, ["\n"]), ("t", 1): (raw, ["\n"])}
        assert "generate_until" not in vars(lm)  # unwrapped afterwards
    assert huggingface.postprocess_generated_text.__module__ == "lm_eval.models.utils"
