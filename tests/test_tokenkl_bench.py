"""benchmarks.bench_tokenkl on the tiny random model: its table is consistent, and it skips without a model."""

import pandas as pd

from benchmarks import bench_tokenkl


def test_bench_rows_bracket_the_exact_kl(random_llama, tmp_path):
    out = tmp_path / "bench"
    args = ["--model", str(random_llama), "--out", str(out), "--prompts", "3", "--max-new-tokens", "6",
            "--ks", "8", "--threads", "1", "--batch-size", "2", "--fragment", ""]
    assert bench_tokenkl.main(args) == 0
    table = pd.read_csv(out / "tokenkl.csv").set_index("k")
    assert list(table.index) == ["8", "full"] and list(table.columns) == bench_tokenkl.COLUMNS[1:]
    full, top = table.loc["full"], table.loc["8"]
    assert full["kl_mean"] == full["kl_mean_upper"] == full["kl_exact"] and full["max_upper_gap"] == 0
    assert top["kl_mean"] <= top["kl_exact"] + 1e-9 <= top["kl_mean_upper"] + 2e-9
    assert top["max_lower_gap"] >= 0 and top["max_upper_gap"] > 0
    assert top["tokens"] == full["tokens"] > 0 and top["reference_bytes"] < full["reference_bytes"]
    assert "| full |" in (out / "tokenkl.md").read_text()


def test_bench_skips_without_a_model(tmp_path, capsys):
    assert bench_tokenkl.main(["--model", str(tmp_path / "none"), "--out", str(tmp_path / "bench")]) == 0
    assert "skipped" in capsys.readouterr().out and not (tmp_path / "bench").exists()
