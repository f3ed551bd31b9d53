"""Sweep aggregation: when a Hydra multirun ends, its member runs become one table, plots and a report.

Hydra calls :class:`SweepSummary` (configured in ``conf/config.yaml``) with the sweep directory; the same
aggregation runs by hand with ``python -m flipbench.sweep <sweep_dir>``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402

from flipbench import plots, sweepstats  # noqa: E402
from flipbench.report import markdown_table  # noqa: E402
from flipbench.rundir import is_complete  # noqa: E402

log = logging.getLogger(__name__)
LEAD = ["method", "bits", "avg_bits", "sparsity", "params_kept", "task", "metric", "filter", "run"]
X_AXES = {  # sweep plot x axis -> (file name part, label)
    "avg_bits": ("bits", "average bits per compressed weight (bits)"),
    "params_kept": ("params_kept", "parameters kept (% of baseline)"),
}


def collect(sweep_dir: Path) -> pd.DataFrame:
    """One row per member × task: each task's headline, whole-task summary row."""
    frames = []
    for run_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and is_complete(p)):
        summary = pd.read_csv(run_dir / "summary.csv")
        rows = summary[summary["headline"] & (summary["group"] == "all")].copy()
        rows["run"] = run_dir.name
        frames.append(rows)
    if not frames:
        return pd.DataFrame(columns=LEAD)
    table = pd.concat(frames, ignore_index=True)
    for column in ("sparsity", "params_kept"):  # runs made before pruning existed lack them
        if column not in table:
            table[column] = float("nan")
    rest = [c for c in table.columns if c not in LEAD and c not in ("group", "headline")]
    order = ["task", "method", "bits", "sparsity", "params_kept"]
    return table[LEAD + rest].sort_values(order, kind="stable").reset_index(drop=True)


def plot_against(table: pd.DataFrame, x: str, column: str, ylabel: str, title: str, stem: Path) -> list[Path]:
    """column (a share) against x (avg_bits or params_kept), one line per method, one panel per task."""
    tasks = sorted(table["task"].unique())
    scale = 100 if x == "params_kept" else 1
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        for method, rows in table[table["task"] == task].groupby("method"):
            rows = rows.sort_values(x)
            ax.plot(scale * rows[x], 100 * rows[column], marker="o", color=plots.colour(method), label=method)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel(X_AXES[x][1])
        ax.axhline(0, color="#cccccc", linewidth=0.8)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title)
    return plots.save(fig, stem)


def _point_label(row) -> str:
    """w4 for a quantized member; a pruned one's folder tag after its number (wanda-s0.5, sparsegpt-2_4-w4)."""
    if row["params_kept"] == row["params_kept"] and row["params_kept"] < 1:
        return str(row["run"]).split("-", 1)[-1]
    return f"w{int(row['bits'])}" if row["bits"] == row["bits"] else ""


def member_overlap(sweep_dir: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pairwise flip overlap and McNemar, Spearman(KL, flips) per task) from the members' samples."""
    members = {run: pd.read_parquet(sweep_dir / run / "samples.parquet", columns=["task", "group", "doc_id", "filter",
                                                                               "correct_base", "correct_comp"])
               for run in table["run"].unique() if (sweep_dir / run / "samples.parquet").is_file()}
    return sweepstats.overlap(members, table), sweepstats.kl_flips_correlation(table)


def aggregate(sweep_dir: Path) -> Path | None:
    """Write sweep_summary.csv, sweep_overlap.csv, sweep_correlation.csv, plots and sweep_report.md; returns
    the summary table's path (None if no member finished)."""
    table = collect(sweep_dir)
    if table.empty:
        log.warning("sweep %s has no complete member runs; nothing to aggregate", sweep_dir)
        return None
    out = sweep_dir / "sweep_summary.csv"
    table.to_csv(out, index=False)
    pairs, correlation = member_overlap(sweep_dir, table)
    pairs.to_csv(sweep_dir / "sweep_overlap.csv", index=False)
    correlation.to_csv(sweep_dir / "sweep_correlation.csv", index=False)
    figures = []
    for x, (name, _) in X_AXES.items():
        if table[x].notna().any():
            axis = "average bits" if x == "avg_bits" else "parameters kept"
            figures += plot_against(table, x, "flips", "flips (% of questions)", f"Flips vs {axis}",
                                    sweep_dir / "plots" / f"flips_vs_{name}")
            figures += plot_against(table, x, "delta_acc", "Δ accuracy (points, compressed − baseline)",
                                    f"Accuracy change vs {axis}", sweep_dir / "plots" / f"delta_acc_vs_{name}")
    points = table.assign(label=[_point_label(row) for _, row in table.iterrows()])
    figures += plots.kl_vs_flips(points, "KL vs flips across the sweep", sweep_dir / "plots" / "kl_vs_flips")
    for task in sorted(pairs["task"].unique()):
        figures += plots.flip_overlap(sweepstats.jaccard_matrix(pairs, task), f"Overlap of flipped docs: {task}",
                                      sweep_dir / "plots" / f"flip_overlap_{task}")
    shown = table[["task", "metric", "method", "bits", "avg_bits", "sparsity", "params_kept", "acc_base", "acc_comp",
                   "delta_acc", "flips", "lost", "gained", "kl_scope", "kl_mean"]].copy()
    for column in ("acc_base", "acc_comp", "flips", "lost", "gained"):
        shown[column] = [f"{100 * v:.1f}%" for v in shown[column]]
    shown["delta_acc"] = [f"{100 * v:+.1f} pp" for v in shown["delta_acc"]]
    shown["avg_bits"] = [f"{v:.2f}" for v in shown["avg_bits"]]
    for column in ("sparsity", "params_kept"):
        shown[column] = [f"{100 * v:.1f}%" if v == v else "" for v in shown[column]]
    shown["kl_mean"] = [f"{v:.4f}" for v in shown["kl_mean"]]
    images = [f"![{f.stem}](plots/{f.name})" for f in figures if f.suffix == ".png"]
    (sweep_dir / "sweep_report.md").write_text(
        f"# flipbench sweep {sweep_dir.name}\n\n{markdown_table(shown)}\n\n"
        "## Do the members flip the same docs?\n\nPer pair of members: flipped docs under each, under both, Jaccard "
        "overlap, and McNemar's exact test between the two members' own answers (a right & b wrong vs a wrong & b "
        f"right).\n\n{markdown_table(_rounded(pairs))}\n\n"
        "## Does KL rank the members like flips?\n\nSpearman's rho between mean KL and flips across members, 95% "
        "Fisher-z interval (n/a below 4 members or at |rho| = 1).\n\n"
        f"{markdown_table(_rounded(correlation))}\n\n" + "\n".join(images) + "\n")
    return out


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.apply(lambda c: c.map(lambda v: "n/a" if v != v else f"{v:.3g}") if c.dtype.kind == "f" else c)


class SweepSummary(Callback):
    """Hydra callback: aggregate when a multirun ends (also after a partial failure of some members)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            path = aggregate(sweep_dir)
            if path:
                print(f"flipbench: sweep summary: {path}")


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m flipbench.sweep <sweep_dir>", file=sys.stderr)
        return 2
    path = aggregate(Path(args[0]))
    print(json.dumps({"sweep_summary": str(path) if path else None}))
    return 0 if path else 1


if __name__ == "__main__":
    sys.exit(main())
