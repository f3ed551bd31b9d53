"""Requests and encodings are built once per run and reused for the next side, with identical results."""

from __future__ import annotations

import pytest

from tests.conftest import compose, mini_overrides


@pytest.fixture(scope="module")
def side(random_llama, mini_tasks, tmp_path_factory):
    """(cfg, plan, task objects, tokenizer, model) for the mini tasks on the random model, no run folder. The
    process-wide memos start empty (earlier tests may have filled them with these very tasks)."""
    from flipbench import models, pipeline, reuse
    from flipbench.config import to_typed

    reuse._REQUESTS.clear()
    reuse._ENCODINGS.clear()
    cfg = to_typed(compose(mini_overrides(random_llama, mini_tasks, tmp_path_factory.mktemp("reuse"))))
    plan = pipeline.preflight(cfg)
    task_objs, tokenizer, _ = pipeline.prepare(cfg, plan)
    model, tokenizer = models.load_model(cfg.model, tokenizer=tokenizer)
    return cfg, plan, task_objs, tokenizer, model


def _counting(monkeypatch, cls, name):
    calls = []
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls.append(args[0] if args else None)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


def test_sides_render_nothing_the_precheck_rendered_and_the_second_tokenizes_nothing(side, monkeypatch):
    from lm_eval.api.task import ConfigurableTask

    from flipbench import pipeline

    cfg, plan, task_objs, tokenizer, model = side
    builds = _counting(monkeypatch, ConfigurableTask, "build_all_requests")
    encodes = _counting(monkeypatch, type(tokenizer), "encode")
    first = pipeline.evaluate_side(model, tokenizer, task_objs, plan, cfg)
    n_builds, n_encodes = len(builds), len(encodes)
    assert n_builds == 0  # the context-length check in prepare() built exactly what the evaluation asks for
    assert n_encodes > 0
    mc_requests = sum(len(r) for r in first.loc[first["output_type"] == "multiple_choice", "choices"])
    assert n_encodes >= mc_requests  # at least one encoding per (context, choice) on the first side

    second = pipeline.evaluate_side(model, tokenizer, task_objs, plan, cfg)
    assert len(builds) == n_builds  # no task rendered its requests again
    generative = int((second["output_type"] == "generate_until").sum())
    # only lm-eval's batch encoding of the generation prompts remains (its own call path, one per batch at most)
    assert len(encodes) - n_encodes <= generative
    assert second["prompt"].tolist() == first["prompt"].tolist()
    assert second["ll"].tolist() == first["ll"].tolist()
    assert second["response"].tolist() == first["response"].tolist()
    assert second["correct"].tolist() == first["correct"].tolist()


def test_a_changed_setting_or_seed_builds_the_requests_again(side, monkeypatch):
    from dataclasses import replace

    from lm_eval.api.task import ConfigurableTask

    from flipbench import pipeline

    cfg, plan, task_objs, tokenizer, model = side
    pipeline.evaluate_side(model, tokenizer, task_objs, plan, cfg)  # the memo holds this setting
    builds = _counting(monkeypatch, ConfigurableTask, "build_all_requests")
    other_seed = replace(cfg, eval=replace(cfg.eval, seed=cfg.eval.seed + 1))
    pipeline.evaluate_side(model, tokenizer, task_objs, plan, other_seed)
    assert len(builds) == len(task_objs)
    fewer = replace(cfg, suite=replace(cfg.suite, limit=3))
    limited = pipeline.evaluate_side(model, tokenizer, task_objs, plan, fewer)
    assert len(builds) == 2 * len(task_objs)
    assert limited.drop_duplicates(["task", "doc_id"]).groupby("task").size().max() == 3


def test_memo_stops_growing_at_its_cap(monkeypatch):
    from flipbench import reuse

    monkeypatch.setattr(reuse, "MAX_MEMO_TOKENS", 5)
    memo = reuse._Encodings()
    memo.put("ctx", " a", [1, 2, 3], [4])
    assert memo.get("ctx", " a") == ([1, 2, 3], [4]) and memo.tokens == 4
    memo.put("ctx", " b", [1, 2, 3], [5])  # 5 tokens now: the cap is reached
    memo.put("ctx", " c", [1, 2, 3], [6])
    assert memo.get("ctx", " b") == ([1, 2, 3], [5])
    assert memo.get("ctx", " c") is None


def test_the_context_check_renders_only_the_docs_that_will_be_evaluated(random_llama, mini_tasks, tmp_path):
    from flipbench import pipeline, reuse
    from flipbench.config import to_typed

    overrides = mini_overrides(random_llama, mini_tasks, tmp_path) + ["+suite.task_limits.mini_mc=3"]
    cfg = to_typed(compose(overrides))
    plan = pipeline.preflight(cfg)
    task_objs, _, _ = pipeline.prepare(cfg, plan)
    built = {leaf: reuse._REQUESTS[leaf][1] for leaf in task_objs}
    assert sorted({inst.doc_id for inst in built["mini_mc"]}) == [0, 1, 2]  # 3 of its 12 docs, 4 choices each
    assert len(built["mini_mc"]) == 12
    assert sorted({inst.doc_id for inst in built["mini_gen"]}) == list(range(6))  # no limit: all 6


def test_a_second_run_in_the_process_reuses_what_the_first_built_until_its_data_changes(random_llama, mini_tasks,
                                                                                         tmp_path, monkeypatch):
    """A sweep's next member (or a search trial) builds new task and tokenizer objects from the same config: it
    renders and encodes nothing again, and scores the same; a data file rewritten in place is rendered again."""
    import shutil

    from lm_eval.api.task import ConfigurableTask

    from flipbench import models, pipeline, reuse
    from flipbench.config import to_typed

    folder = tmp_path / "tasks"
    shutil.copytree(mini_tasks, folder)
    monkeypatch.setattr(reuse, "_REQUESTS", {})
    monkeypatch.setattr(reuse, "_ENCODINGS", {})

    def member():
        cfg = to_typed(compose(mini_overrides(random_llama, folder, tmp_path / "results")))
        plan = pipeline.preflight(cfg)
        task_objs, tokenizer, _ = pipeline.prepare(cfg, plan)
        model, tokenizer = models.load_model(cfg.model, tokenizer=tokenizer)
        return task_objs, tokenizer, pipeline.evaluate_side(model, tokenizer, task_objs, plan, cfg)

    first_tasks, first_tok, first = member()
    builds = _counting(monkeypatch, ConfigurableTask, "build_all_requests")
    encodes = _counting(monkeypatch, type(first_tok), "encode")
    second_tasks, second_tok, second = member()
    assert second_tok is not first_tok and set(map(id, second_tasks.values())).isdisjoint(map(id, first_tasks.values()))
    assert builds == []
    generative = int((second["output_type"] == "generate_until").sum())
    assert len(encodes) <= generative  # only the generation prompts' batch encoding is left
    assert second["prompt"].tolist() == first["prompt"].tolist() and second["ll"].tolist() == first["ll"].tolist()

    data = folder / "data" / "mc_test.jsonl"
    data.write_text(data.read_text().replace("what colour", "which colour"))
    _, _, third = member()
    assert sorted(set(builds)) == [None] and len(builds) >= 1  # mini_mc rendered again (its data changed)
    assert any("which colour" in p for p in third["prompt"]) and not any("which colour" in p for p in first["prompt"])
