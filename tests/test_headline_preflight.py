"""Headline metrics are checked against the tasks' own metric lists before any model loads (issue 23, case 1)."""

from __future__ import annotations

import shutil

import pytest

from flipbench import evaluate, tasks
from flipbench.config import ConfigError, SuiteConfig
from flipbench.preflight import check_headline_metrics

BRIER_YAML = """task: mini_brier
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/mc_test.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: brier_score
    higher_is_better: false
"""


@pytest.fixture(scope="module")
def loaded(mini_tasks, tmp_path_factory):
    folder = tmp_path_factory.mktemp("brier_tasks")
    shutil.copytree(mini_tasks, folder, dirs_exist_ok=True)
    (folder / "mini_brier.yaml").write_text(BRIER_YAML)
    plan = tasks.resolve(SuiteConfig(tasks=["mini_mc", "mini_gen", "mini_brier"], include_path=str(folder),
                                     data_files={}))
    return evaluate.load_tasks(plan), plan.reported


@pytest.mark.parametrize("metrics, correct_if, message", [
    ({"mini_gen": ["exact_matc"]}, {}, "suite.metrics.mini_gen: 'exact_matc' is not a metric of mini_gen; it has exact_match"),
    ({"mini_mc": ["f1"]}, {}, "'f1' is not a metric of mini_mc; it has acc, acc_norm"),
    ({}, {}, r"mini_brier's headline metric 'brier_score' is not 0/1 per doc.*\+suite.correct_if.mini_brier='<=X'"),
    ({}, {"mini_brier": ">=0.5"}, "counts high values of brier_score as correct, but brier_score is "
                                  "lower-is-better; write '<=0.5'"),
    ({"nope": ["acc"]}, {"mini_brier": "<=0.25"}, "suite.metrics.nope: 'nope' is not a task of this run"),
])
def test_bad_headline_metrics_are_one_line(loaded, metrics, correct_if, message):
    task_objs, reported = loaded
    with pytest.raises(ConfigError, match=message) as err:
        check_headline_metrics(task_objs, reported, metrics, correct_if)
    assert "\n" not in str(err.value)


def test_good_headline_metrics_pass(loaded):
    task_objs, reported = loaded
    check_headline_metrics(task_objs, reported, {"mini_mc": ["acc_norm", "acc_bytes"], "mini_gen": ["exact_match"]},
                           {"mini_brier": "<=0.25"})
