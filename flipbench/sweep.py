"""Sweep aggregation: when a Hydra multirun ends, its member runs become one table, plots and a report.

Hydra calls :class:`SweepSummary` (configured in ``conf/config.yaml``) with the sweep directory; the same
aggregation runs by hand with ``python -m flipbench.sweep <sweep_dir>``. The report lists every member: the
complete ones with their gate verdict, the failed ones with their error, and the ones the sweep's overrides
expand to that left no folder. A sweep with a gate exits 3 when no member passes it (as one run does).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402

from flipbench import plots, sweepstats  # noqa: E402
from flipbench.report import markdown_table, saved_text  # noqa: E402
from flipbench.rundir import is_complete, read_manifest, state  # noqa: E402

log = logging.getLogger(__name__)
EXIT_GATE_FAILED = 3  # as flipbench.cli: the release gate failed
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
    for column in ("sparsity", "params_kept", "model_bytes", "baseline_bytes"):  # runs made before these existed
        if column not in table:
            table[column] = float("nan")
    rest = [c for c in table.columns if c not in LEAD and c not in ("group", "headline")]
    order = ["task", "method", "bits", "sparsity", "params_kept"]
    return table[LEAD + rest].sort_values(order, kind="stable").reset_index(drop=True)


def expected_members(overrides: list[str] | None) -> int | None:
    """How many members the sweep's command-line overrides expand to (Hydra's basic sweeper), None if unknown."""
    if overrides is None:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))


def saved_overrides(sweep_dir: Path) -> list[str] | None:
    """The task overrides Hydra saved in the sweep's multirun.yaml (written when a multirun ends), if any."""
    from omegaconf import OmegaConf

    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    return list(OmegaConf.select(OmegaConf.load(path), "hydra.overrides.task", default=[]) or [])


def members(sweep_dir: Path, expected: int | None = None) -> pd.DataFrame:
    """One row per member: run (folder), status (complete | failed | running | stale | missing), gate verdict,
    error. Member folders are named ``<job number>-<tag>``; a job number below ``expected`` without a folder is
    a member that never wrote one (it crashed before its run started, or never ran)."""
    rows, numbers = [], set()
    for run_dir in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.split("-", 1)[0].isdigit()),
                          key=lambda p: int(p.name.split("-", 1)[0])):
        numbers.add(int(run_dir.name.split("-", 1)[0]))
        data = read_manifest(run_dir)
        status = state(run_dir)
        verdict = (data.get("gate") or {}).get("verdict", "not set") if status == "complete" else ""
        error = "" if status == "complete" else data.get("error") or (
            "no manifest.json: the member stopped before its run started" if status == "missing" else f"run is {status}")
        rows.append({"run": run_dir.name, "status": status, "gate": verdict, "error": error})
    for number in sorted(set(range(expected or 0)) - numbers):
        rows.append({"run": f"{number}-?", "status": "missing", "gate": "",
                     "error": "no folder: the member never started or failed before writing one"})
    return pd.DataFrame(rows, columns=["run", "status", "gate", "error"])


def gate_outcome(roster: pd.DataFrame) -> tuple[bool, list[str]]:
    """(a gate was set on the sweep, the members that pass it)."""
    judged = roster[roster["gate"].isin(["PASS", "FAIL"])]
    return len(judged) > 0, judged.loc[judged["gate"] == "PASS", "run"].tolist()


def members_section(roster: pd.DataFrame) -> str:
    gated, passing = gate_outcome(roster)
    failed = roster[roster["status"] != "complete"]
    lines = ["## Members", ""]
    if gated:
        lines += [f"Release gate: {len(passing)} of {len(roster)} members pass" + (f": {', '.join(passing)}." if passing
                  else "; none passes (exit 3)."), ""]
    if len(failed):
        lines += [f"{len(failed)} member(s) did not complete and are left out of every table below.", ""]
    return "\n".join(lines + [markdown_table(roster) if len(roster) else "No member folder.", ""])


DECISION_COLUMNS = ("avg_bits", "params_kept", "model_bytes", "baseline_bytes", "flips_ci_low", "flips_ci_high",
                    "delta_acc", "delta_acc_ci_low", "delta_acc_ci_high")


def decision_table(roster: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """One row per member, the decision view: gate verdict, cost (average bits, parameters kept, and the size saved
    against the baseline where both sizes are known), and its worst task's flips and Δacc with their 95% intervals
    (flips: exact Clopper-Pearson; Δacc: Tango)."""
    rows = []
    for _, member in roster.iterrows():
        mine = table[table["run"] == member["run"]]
        row = {"member": member["run"], "gate": member["gate"] or member["status"]}
        if len(mine) and mine["flips"].notna().any():
            mine = mine.reindex(columns=[*mine.columns, *(c for c in DECISION_COLUMNS if c not in mine)])
            worst = mine.loc[mine["flips"].idxmax()]
            drop = mine.loc[mine["delta_acc"].fillna(np.inf).idxmin()]
            row.update({"avg bits": f"{worst['avg_bits']:.2f}" if worst["avg_bits"] == worst["avg_bits"] else "",
                        "params kept": f"{100 * worst['params_kept']:.1f}%" if worst["params_kept"] == worst["params_kept"] else "",
                        "size saved": saved_text(worst["baseline_bytes"], worst["model_bytes"]),
                        "worst flips": f"{worst['task']}: {100 * worst['flips']:.1f}% [{100 * worst['flips_ci_low']:.1f}, "
                                       f"{100 * worst['flips_ci_high']:.1f}]",
                        "worst Δacc": f"{drop['task']}: {100 * drop['delta_acc']:+.1f} pp [{100 * drop['delta_acc_ci_low']:+.1f}, "
                                      f"{100 * drop['delta_acc_ci_high']:+.1f}]"})
        rows.append(row)
    return pd.DataFrame(rows)


def cheapest_passing(roster: pd.DataFrame, table: pd.DataFrame) -> str | None:
    """The passing member with the fewest average bits (else the fewest parameters kept), or None."""
    _, passing = gate_outcome(roster)
    costs = table[table["run"].isin(passing)].groupby("run")[["avg_bits", "params_kept"]].first()
    if costs.empty:
        return None
    key = "avg_bits" if costs["avg_bits"].notna().all() else "params_kept"
    if costs[key].isna().all():  # members with no cost (e.g. compared from logs): no cheapest to name
        return None
    best = costs[key].idxmin()
    unit = f"{costs.loc[best, key]:.2f} average bits" if key == "avg_bits" else f"{100 * costs.loc[best, key]:.1f}% of parameters kept"
    return f"{best} ({unit})"


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
    pairs = sweepstats.overlap(members, table)
    pairs["distinguished_by_replicas"] = replica_distinguished(pairs, table)
    return pairs, sweepstats.kl_flips_correlation(table)


def replica_distinguished(pairs: pd.DataFrame, table: pd.DataFrame) -> list:
    """Per pair: do the two members' flip ranges over their compression replicas (compression.replicas) stay apart?
    False: the compressor's own noise could produce the difference; NaN where a member has no replicas."""
    from flipbench.replicas import distinguished

    if "flips_rep_min" not in table:
        return [float("nan")] * len(pairs)
    ranges = {(r["run"], r["task"]): (r["flips_rep_min"], r["flips_rep_max"]) for _, r in table.iterrows()
              if r["flips_rep_min"] == r["flips_rep_min"] and r["replicas"] > 1}
    out = []
    for _, p in pairs.iterrows():
        a, b = ranges.get((p["member_a"], p["task"])), ranges.get((p["member_b"], p["task"]))
        out.append(distinguished(a, b) if a and b else float("nan"))
    return out


def aggregate(sweep_dir: Path, overrides: list[str] | None = None) -> Path | None:
    """Write sweep_summary.csv, sweep_overlap.csv, sweep_correlation.csv, sweep_members.csv, plots and
    sweep_report.md; returns the summary table's path (None if no member finished). ``overrides``: the sweep's
    task overrides (default: those in its multirun.yaml), to find members that left no folder."""
    roster = members(sweep_dir, expected_members(overrides if overrides is not None else saved_overrides(sweep_dir)))
    roster.to_csv(sweep_dir / "sweep_members.csv", index=False)
    table = collect(sweep_dir)
    if table.empty:
        log.warning("sweep %s has no complete member runs; nothing to aggregate", sweep_dir)
        (sweep_dir / "sweep_report.md").write_text(f"# flipbench sweep {sweep_dir.name}\n\n{members_section(roster)}")
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
    decision = decision_table(roster, table)
    gated, passing = gate_outcome(roster)
    cheapest = cheapest_passing(roster, table)
    head = ([f"**Release gate: {len(passing)} of {len(roster)} members pass**"
             + (f"; the cheapest that passes: {cheapest}" if cheapest else "; none passes (exit 3)")] if gated
            else ["**Release gate: not set**"])
    from flipbench.report import write_html

    write_html(sweep_dir / "sweep_report.html", f"flipbench sweep {sweep_dir.name}", head,
               [("Decision", decision), ("Members", roster), ("Headline per member and task", shown),
                ("Do the members flip the same docs?", _rounded(pairs)),
                ("Does KL rank the members like flips?", _rounded(correlation))], figures)
    (sweep_dir / "sweep_report.md").write_text(
        f"# flipbench sweep {sweep_dir.name}\n\n" + "\n".join(head) + "\n\n## Decision\n\n"
        + f"{markdown_table(decision)}\n\n{members_section(roster)}\n{markdown_table(shown)}\n\n"
        "## Do the members flip the same docs?\n\nPer pair of members: flipped docs under each, under both, Jaccard "
        "overlap, and McNemar's exact test between the two members' own answers (a right & b wrong vs a wrong & b "
        "right); mcnemar_p_holm is Holm-adjusted over the task's pairs (read that one: with many members some raw "
        "p-value is small by chance). distinguished_by_replicas (members compressed with compression.replicas): "
        "whether the two members' flip ranges over their replicas stay apart; False means the compressor's own noise "
        f"could produce the difference.\n\n{markdown_table(_rounded(pairs))}\n\n"
        "## Does KL rank the members like flips?\n\nSpearman's rho between mean KL and flips across members, 95% "
        "Fisher-z interval (n/a below 4 members or at |rho| = 1).\n\n"
        f"{markdown_table(_rounded(correlation))}\n\n" + "\n".join(images) + "\n")
    return out


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.apply(lambda c: c.map(lambda v: "n/a" if v != v else f"{v:.3g}") if c.dtype.kind == "f" else c)


def verdict_line(sweep_dir: Path) -> tuple[str, int]:
    """(one line on the sweep's gate, exit code): 3 when a gate was set and no member passes it, else 0."""
    roster = pd.read_csv(sweep_dir / "sweep_members.csv", keep_default_na=False)
    gated, passing = gate_outcome(roster)
    if not gated:
        return "gate: not set", 0
    if not passing:
        return f"gate: FAIL, none of the {len(roster)} members passes", EXIT_GATE_FAILED
    return f"gate: {len(passing)} of {len(roster)} members pass ({', '.join(passing)})", 0


class SweepSummary(Callback):
    """Hydra callback: aggregate when a multirun ends; exit 3 when a gate was set and no member passes it."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        from omegaconf import OmegaConf

        path = aggregate(sweep_dir, list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False)))
        if path:
            print(f"flipbench: sweep summary: {path}")
        line, code = verdict_line(sweep_dir)
        print(f"flipbench: sweep {line}")
        if code:
            # Hydra writes multirun.yaml after this callback; keep it for a later `python -m flipbench.sweep`.
            if not (sweep_dir / "multirun.yaml").exists():
                OmegaConf.save(config, sweep_dir / "multirun.yaml")
            # SystemExit passes through Hydra's error handler, so the exit code reaches the shell.
            sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m flipbench.sweep <sweep_dir>", file=sys.stderr)
        return 2
    path = aggregate(Path(args[0]))
    line, code = verdict_line(Path(args[0]))
    print(json.dumps({"sweep_summary": str(path) if path else None, "gate": line}))
    return code if path else 1


if __name__ == "__main__":
    sys.exit(main())
