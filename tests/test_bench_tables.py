"""The table logic of the benchmarks that write the docs' measured fragments, on hand-written frames (the
benchmarks themselves load real models and run for minutes; their tables must say what the frames say)."""

import math

import numpy as np
import pandas as pd
import pytest

from benchmarks import compare_lmeval, gate_example, sweep_overlap, two_phase

KEY = {"task": ["a", "a"], "group": ["all", "all"], "metric": ["acc", "acc_norm"], "filter": ["none", "none"]}


def test_differing_columns_is_exact_and_names_one_sided_columns():
    a = pd.DataFrame({**KEY, "flips": [0.1, 0.2], "kl_mean": [np.nan, 0.5], "only_a": [1, 2]})
    b = pd.DataFrame({**KEY, "flips": [0.1, 0.2 + 1e-12], "kl_mean": [np.nan, 0.5], "only_b": [1, 2]})
    assert compare_lmeval.differing_columns(a, b) == (["flips"], ["only_a", "only_b"])
    with pytest.raises(SystemExit, match="different rows"):
        compare_lmeval.differing_columns(a, b.iloc[:1])


def test_summary_table_formats_percentages_and_the_interval():
    row = {"task": "arc", "group": "all", "metric": "acc", "filter": "none", "n": 200.0, "acc_base": 0.685,
           "acc_comp": 0.68, "flips": 0.015, "flips_ci_low": 0.0031, "flips_ci_high": 0.0432, "lost": 0.01,
           "gained": 0.005, "label_loyalty": 0.985, "kl_mean": 0.00304, "kl_p99": float("nan"), "mcnemar_p": 0.625}
    other = {**row, "group": "subject_x"}
    table = compare_lmeval.summary_table(pd.DataFrame([row, other]))
    assert len(table) == 1
    got = table.iloc[0]
    assert (got["n"], got["acc_base"], got["flips [95% CI]"]) == (200, "68.5%", "1.5% [0.3, 4.3]")
    assert (got["kl_mean (choice, nats)"], got["kl_p99"], got["mcnemar_p"]) == ("0.0030", "n/a", "0.625")


def test_differences_are_relative_and_text_is_nan():
    a = pd.DataFrame({**KEY, "kl_mean": [0.5, 0.0], "note": ["x", "y"], "same": [1, 1]})
    b = pd.DataFrame({**KEY, "kl_mean": [0.4, 0.0], "note": ["x", "z"], "same": [1, 1]})
    out = two_phase.differences(a, b)
    assert set(out) == {"kl_mean", "note"}
    assert out["kl_mean"] == pytest.approx(0.1 / 0.5) and math.isnan(out["note"])


def test_headline_table_marks_token_kl_and_names_the_filter():
    rows = pd.DataFrame({**KEY, "headline": [True, False], "n": [100, 100], "acc_base": [0.87, 0.5],
                         "acc_comp": [0.86, 0.5], "flips": [0.03, 0.0], "lost": [0.02, 0.0], "gained": [0.01, 0.0],
                         "label_loyalty": [0.95, 1.0], "kl_mean": [0.00224, 0.0], "kl_scope": ["token", "choice"]})
    rows.loc[0, "filter"] = "strict-match"
    table = two_phase.headline_table(rows)
    assert table["metric"].tolist() == ["acc (strict-match)"]
    assert table["KL mean (nats)"].tolist() == ["0.0022 (token)"] and table["flips"].tolist() == ["3.0%"]


def test_overlap_and_correlation_tables():
    pairs = pd.DataFrame({"task": ["t"], "member_a": ["w2"], "member_b": ["w3"], "n": [200], "flips_a": [40],
                          "flips_b": [10], "flips_both": [8], "jaccard": [8 / 42], "a_right_b_wrong": [3],
                          "a_wrong_b_right": [12], "mcnemar_p": [0.035], "mcnemar_p_holm": [float("nan")]})
    got = sweep_overlap.overlap_table(pairs).iloc[0]
    assert (got["pair"], got["flips a / b"], got["Jaccard"]) == ("w2 vs w3", "40 / 10", "0.19")
    assert (got["McNemar p"], got["Holm-adjusted"]) == ("0.035", "n/a")
    corr = pd.DataFrame({"task": ["t"], "members": [3], "spearman_kl_flips": [1.0], "spearman_ci_low": [-0.5],
                         "spearman_ci_high": [1.0], "spearman_p": [0.0]})
    got = sweep_overlap.correlation_table(corr).iloc[0]
    assert (got["Spearman rho (KL mean vs flips)"], got["95% interval"]) == ("1.00", "-0.50 to 1.00")


def test_gate_example_checks_text():
    task = {"checks": [{"check": "max_acc_drop", "value": 0.015, "pass": True, "limit": 0.02},
                       {"check": "max_choice_kl_mean", "value": 0.0612, "pass": False, "limit": 0.05}]}
    assert gate_example.checks_text(task) == "max_acc_drop 0.0150 ≤ 0.02; max_choice_kl_mean 0.0612 > 0.05"


def test_publish_writes_the_fragment_with_its_command_or_prints_the_body(capsys):
    from benchmarks import provenance

    provenance.publish("", "benchmarks.x", ["--a", "1"], "the body", None)
    assert capsys.readouterr().out == "the body\n"
    provenance.publish("x-test", "benchmarks.x", ["--a", "1"], "the body", None)
    written = (provenance.MEASURED / "x-test.md").read_text()  # tests point MEASURED at a temporary folder
    assert capsys.readouterr().out.strip() == str(provenance.MEASURED / "x-test.md")
    assert "`python -m benchmarks.x --a 1`" in written and written.rstrip().endswith("the body")
