"""flipbench's per-doc correctness and accuracies agree with a plain ``lm_eval.simple_evaluate`` on every
multiple-choice shape: several gold answers, Winogrande-style multiple inputs, acc_mutual_info, acc_bytes,
and an MMLU-like group whose category rows must equal lm-eval's group aggregates.

One flipbench run (bundled tiny model against its 2-bit RTN copy) and one plain lm-eval run of the baseline
serve the default tests; the plain run of the quantized copy (for the compressed side and the flips) is slow.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from flipbench import metrics, pipeline, scoring
from tests.conftest import compose
from tests.shape_tasks import (MMLU_CATEGORIES, SHAPE_METRICS, flipbench_overrides, per_doc, plain_lm_eval,
                               write_shape_tasks)


@pytest.fixture(scope="session")
def shape_folder(tmp_path_factory):
    return write_shape_tasks(tmp_path_factory.mktemp("shape_tasks"))


@pytest.fixture(scope="session")
def shape_run(shape_folder, tmp_path_factory):
    """flipbench on the shape tasks: (samples.parquet, summary.csv, manifest), baseline vs 2-bit RTN."""
    run_dir = pipeline.run(compose(flipbench_overrides(shape_folder, tmp_path_factory.mktemp("shape_results"))))
    return (pd.read_parquet(run_dir / "samples.parquet"), pd.read_csv(run_dir / "summary.csv"),
            json.loads((run_dir / "manifest.json").read_text()))


@pytest.fixture(scope="session")
def plain_base(shape_folder):
    return plain_lm_eval(shape_folder, quantize=False)


def leaf_values(results: dict, leaf: str, metric: str) -> list[float]:
    return [float(s[metric]) for s in sorted(results["samples"][leaf], key=lambda s: s["doc_id"])]


def check_side(samples: pd.DataFrame, summary: pd.DataFrame, plain: dict, side: str) -> None:
    """Every doc's correctness under every reported metric, and every accuracy row, equal lm-eval's."""
    checked = 0
    for task, task_metrics in SHAPE_METRICS.items():
        rows = samples[samples["task"] == task]
        for metric in task_metrics:
            _, correct = metrics.predictions(rows, side, metric)
            expected = [per_doc(plain, r, metric) for _, r in rows.iterrows()]
            assert correct.tolist() == expected, (task, metric)
            checked += len(expected)
            whole = summary[(summary["task"] == task) & (summary["group"] == "all") & (summary["metric"] == metric)]
            assert whole[f"acc_{side}"].item() == pytest.approx(plain["results"][task][f"{metric},none"])
    assert checked == sum(len(samples[samples["task"] == t]) * len(m) for t, m in SHAPE_METRICS.items())


def test_baseline_correctness_is_lm_eval_s_per_doc_and_in_aggregate(shape_run, plain_base):
    samples, summary, _ = shape_run
    check_side(samples, summary, plain_base, "base")


def test_shapes_need_their_own_scoring(shape_run, plain_base):
    """Guard against a task set that would pass with one integer target: the shapes must bite."""
    samples, _, _ = shape_run
    multigold = samples[samples["task"] == "shape_multigold"].set_index("doc_id")
    assert multigold.loc[4, "target"].isdigit() and multigold.loc[1, "target"].count(",") == 1  # gold 9 is dropped
    first_only = [int(p) == scoring.gold_indices(t)[0] for p, t in zip(multigold["pred_base"], multigold["target"])]
    assert multigold["correct_base"].sum() > sum(first_only)  # docs right by a gold that is not listed first
    multi_input = samples[samples["task"] == "shape_multi_input"]
    assert 0 < multi_input["correct_base"].sum() < len(multi_input)  # the old reading scored every doc wrong
    assert (multi_input["choices"].map(len) == 2).all()  # pred over the two contexts
    mi, acc = (leaf_values(plain_base, "shape_mutual_info", m) for m in ("acc_mutual_info", "acc"))
    assert mi != acc  # mutual information changes some decisions on these docs
    by_bytes, by_chars = (leaf_values(plain_base, "shape_bytes", m) for m in ("acc_bytes", "acc_norm"))
    assert by_bytes != by_chars  # ll / bytes and ll / characters decide differently on some doc


def test_recomputed_predictions_match_lm_eval_everywhere(shape_run):
    """n_pred_mismatch = 0: flipbench's decision rules reproduce lm-eval's value on both sides for every shape."""
    samples, summary, manifest = shape_run
    assert manifest["n_pred_mismatch"] == 0 and (summary["n_pred_mismatch"] == 0).all()
    recomputed = samples.drop(columns=["lm_correct_base", "lm_correct_comp"])
    for task, task_metrics in SHAPE_METRICS.items():
        rows, bare = samples[samples["task"] == task], recomputed[recomputed["task"] == task]
        for metric in task_metrics:
            for side in ("base", "comp"):
                assert (metrics.predictions(bare, side, metric)[1] == metrics.predictions(rows, side, metric)[1]).all()


def test_category_rows_are_lm_eval_s_group_aggregates(shape_run, plain_base):
    _, summary, _ = shape_run
    mmlu = summary[summary["task"] == "shape_mmlu"]
    categories = mmlu[mmlu["level"] == "category"]
    names = {alias or group: group for group, (alias, _) in MMLU_CATEGORIES.items()}
    assert sorted(categories["group"]) == sorted(names)
    for _, row in categories.iterrows():
        assert row["acc_base"] == pytest.approx(plain_base["results"][names[row["group"]]]["acc,none"])
        assert row["n"] == sum(len(plain_base["samples"][f"shape_mmlu_{s}"]) for s in MMLU_CATEGORIES[names[row["group"]]][1])
    assert mmlu["level"].tolist()[:1] == ["task"] and set(mmlu["level"]) == {"task", "category", "group"}
    assert set(mmlu.loc[mmlu["level"] == "group", "group"]) == {"history", "zoology", "astronomy"}


@pytest.mark.slow
def test_compressed_side_and_flips_match_plain_lm_eval_on_the_quantized_copy(shape_run, shape_folder):
    samples, summary, _ = shape_run
    plain_comp = plain_lm_eval(shape_folder, quantize=True)
    check_side(samples, summary, plain_comp, "comp")
    plain_base = plain_lm_eval(shape_folder, quantize=False)
    for task, task_metrics in SHAPE_METRICS.items():
        rows = samples[samples["task"] == task]
        for metric in task_metrics:
            base = np.array([per_doc(plain_base, r, metric) for _, r in rows.iterrows()])
            comp = np.array([per_doc(plain_comp, r, metric) for _, r in rows.iterrows()])
            whole = summary[(summary["task"] == task) & (summary["group"] == "all") & (summary["metric"] == metric)]
            assert whole["flips"].item() == pytest.approx(np.mean(base != comp))
