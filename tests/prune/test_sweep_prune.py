"""Sweep aggregation with pruned and quantized members side by side (members' summary.csv written here)."""

import json

import pandas as pd

from flipbench.sweep import aggregate

COLUMNS = ["method", "bits", "avg_bits", "sparsity", "params_kept", "task", "group", "metric", "filter", "headline",
           "acc_base", "acc_comp", "delta_acc", "flips", "lost", "gained", "kl_scope", "kl_mean"]


def member(sweep_dir, name, method, bits, avg_bits, sparsity, params_kept, flips):
    run = sweep_dir / name
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"status": "complete"}))
    rows = [[method, bits, avg_bits, sparsity, params_kept, "t", "all", "acc", "none", True, 0.8, 0.8 - flips / 2,
             -flips / 2, flips, flips * 0.75, flips * 0.25, "choice", flips / 10],
            [method, bits, avg_bits, sparsity, params_kept, "t", "g1", "acc", "none", True, 0.8, 0.1, -0.7, 0.9, 0.8,
             0.1, "choice", 1.0]]  # a subject row: not a sweep point
    pd.DataFrame(rows, columns=COLUMNS).to_csv(run / "summary.csv", index=False)


def test_pruned_members_get_parameters_kept_plots_and_columns(tmp_path):
    member(tmp_path, "0-rtn-w4", "rtn", 4, 4.25, float("nan"), 1.0, 0.05)
    member(tmp_path, "1-wanda-s0.5", "wanda", float("nan"), 17.0, 0.5, 0.57, 0.10)
    member(tmp_path, "2-wanda-2_4", "wanda", float("nan"), 17.0, 0.5, 0.57, 0.12)
    member(tmp_path, "3-layerdrop-n1", "layerdrop", float("nan"), 24.0, 0.25, 0.78, 0.2)
    (tmp_path / "4-unfinished").mkdir()
    table = pd.read_csv(aggregate(tmp_path))
    assert len(table) == 4 and list(table.columns[:5]) == ["method", "bits", "avg_bits", "sparsity", "params_kept"]
    assert table.set_index("run").loc["2-wanda-2_4", "flips"] == 0.12
    for stem in ("flips_vs_bits", "delta_acc_vs_bits", "flips_vs_params_kept", "delta_acc_vs_params_kept"):
        assert (tmp_path / "plots" / f"{stem}.png").is_file()
    report = (tmp_path / "sweep_report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| task"))
    assert "sparsity" in header and "params_kept" in header
    assert "57.0%" in report and "100.0%" in report  # parameters kept, shown as shares
