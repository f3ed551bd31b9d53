"""The search's Pareto plot and search_report.md / search_report.html (self-contained, text escaped)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from flipbench import plots
from flipbench.gate import limits_for
from flipbench.report import markdown_table

plt = plots.plt


def pareto_plot(ctx, trials: pd.DataFrame, front: pd.DataFrame, rec: dict, cost_key: str, budget, stem: Path):
    """Per task: flips with 95% intervals against cost for every full-fidelity configuration (screening scores
    hollow), the Pareto front joined, the flips limit and the budget drawn, the recommendation starred."""
    x_col = "avg_bits" if cost_key == "avg_bits" else "model_gb"
    x_label = "average bits per quantized weight (bits)" if x_col == "avg_bits" else "model size (GB, 10^9 bytes)"
    scored = trials[trials["fidelity"] > 0]
    tasks = sorted(scored["task"].dropna().unique())
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.6 * max(1, len(tasks)), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = scored[scored["task"] == task]
        screen = rows[rows["full_fidelity"] != True]  # noqa: E712
        ax.scatter(screen[x_col], 100 * screen["flips"], facecolors="none", edgecolors="#aaaaaa", s=18,
                   label=f"screened ({', '.join(f'{100 * d:g}%' for d in ctx.shares[:-1])} of the docs)")
        full = rows[rows["full_fidelity"] == True]  # noqa: E712
        for method, group in full.groupby("method"):
            err = [100 * (group["flips"] - group["flips_ci_low"]), 100 * (group["flips_ci_high"] - group["flips"])]
            ax.errorbar(group[x_col], 100 * group["flips"], yerr=err, fmt="o", color=plots.colour(method), ms=4,
                        capsize=2, label=f"{method}, every doc (95% CI)")
        on_front = full[full["label"].isin(front["label"])].sort_values(x_col)
        ax.plot(on_front[x_col], 100 * on_front["flips"], color="#444444", linewidth=0.8, label="Pareto front")
        limit = limits_for(task, ctx.gate).get("max_flips")
        if limit is not None:
            ax.axhline(100 * limit, color="#d62728", linestyle="--", linewidth=1, label=f"max_flips {100 * limit:g}%")
        edge = budget.max_avg_bits if x_col == "avg_bits" else (budget.max_model_bytes or 0) / 1e9 or None
        if edge:
            ax.axvline(edge, color="#9467bd", linestyle=":", linewidth=1, label="budget")
        chosen = full[full["label"] == rec.get("label")]
        if len(chosen):
            ax.scatter(chosen[x_col], 100 * chosen["flips"], marker="*", s=220, color="gold", edgecolors="black",
                       zorder=5, label=("recommended: " if rec["passes"] else "closest (fails): ") + rec["label"])
        ax.set_title(task, fontsize=9)
        ax.set_xlabel(x_label)
        ax.set_ylabel("flips (% of questions)")
        ax.legend(fontsize=6)
    fig.suptitle("Budget search: flips vs cost")
    return plots.save(fig, stem)


def judged(rec: dict) -> str:
    """What a pass means in this search, in words (multiplicity included)."""
    multiplicity = rec.get("multiplicity") or {}
    m = multiplicity.get("configurations_compared", 0)
    if rec.get("judged_on") == "upper_ci":
        return (f"on the pessimistic end of each interval, adjusted for the {m} configurations compared (Bonferroni: "
                f"each at {100 * multiplicity.get('confidence', 0.95):.2f}% instead of 95%, so the chance that the "
                "choice passes only by luck stays under 5% over the whole search), and by flipbench's own gate on "
                "its full-fidelity run")
    return (f"on point estimates, as flipbench's gate judges them (gate.on=point), and by that gate on its "
            f"full-fidelity run; the selection among {m} configurations is not adjusted for multiplicity (point "
            "estimates have no interval to widen): set gate.on=upper_ci for bounds adjusted for it")


def screening_line(rec: dict) -> str:
    """How the screening rungs decided, with their error budget."""
    s = rec.get("screening") or {}
    shares = ", ".join(f"{100 * x:g}%" for x in rec["rungs"][:-1])
    if not s.get("screening_rungs"):
        return "Screening: none (one rung, every doc)."
    dropped = ", ".join(s["dropped"]) or "none"
    return (f"Screening: rungs on a seeded random {shares} of every task's docs (the sequential gate's order), judged "
            "on exact finite-population bounds for the full-benchmark flips, lost and accuracy drop: a configuration "
            "is dropped only when a limit's lower bound lies above it (KL limits are not bounded: never dropped on "
            f"them). Error budget gate.alpha={s['alpha']:g} split over {s['screening_rungs']} screening rung(s) x "
            f"{s['checks']} check(s) (union bound): each bound at {s['alpha_per_check']:.3g}, so a configuration that "
            f"meets every proportion limit on all the docs is dropped with probability <= {s['alpha']:g}. "
            f"Dropped: {dropped}.")


def noise_line(rec: dict) -> list[str]:
    """The compression-noise statement: is the first-ranked configuration distinguished from the next by flips?"""
    n = rec.get("compression_noise")
    if not n:
        return []
    ranges = "; ".join(f"{task} {100 * lo:.1f}–{100 * hi:.1f}%" for task, (lo, hi) in n["flips_range"].items())
    line = (f"Compression noise ({n['replicas']} replicas of every method that draws calibration; RTN is identical "
            f"by construction): {rec['label']} flips over its replicas: {ranges or 'no range'}.")
    if n.get("runner_up"):
        kind = "the next passing configuration" if n.get("runner_up_passes") else "the nearest miss"
        if n["distinguished_from_runner_up"] is False:
            line += (f" **Not distinguished by flips** from {kind}, {n['runner_up']}: their replica flip ranges overlap "
                     "on every task, so the difference between them is within the compression's own noise.")
        elif n["distinguished_from_runner_up"]:
            line += f" Distinguished by flips from {kind}, {n['runner_up']} (disjoint replica ranges on some task)."
    if n["not_distinguished_from"]:
        line += f" Not distinguished from: {', '.join(n['not_distinguished_from'])}."
    return ["", line]


def _lines(cfg, budget, rec: dict) -> list[str]:
    verdict = (f"**Recommended: {rec['label']}** ({rec['avg_bits']:.3f} avg bits, {rec['model_gb']:.4f} GB), passes "
               f"every limit at full fidelity {judged(rec)}." if rec["passes"] else
               "**None passes** every limit at full fidelity" + f" {judged(rec)}." + (
                   f" Closest: {rec['label']} (largest relative excess over a limit {rec['violation']:.3g})."
                   if rec.get("label") else ""))
    limits = {k: v for k, v in vars(cfg.gate).items() if v not in (None, {}) and (k.startswith("max_") or k == "per_task")}
    bound = "the 95% interval's worse end" if rec.get("judged_on") == "upper_ci" else "the point estimates"
    lines = [verdict, "",
             f"Budget: max_avg_bits={budget.max_avg_bits}, max_model_bytes={budget.max_model_bytes}; cost ranked: "
             f"{cfg.search.cost}. Limits: {limits or 'none'}, judged at full fidelity on {bound}.", "",
             screening_line(rec), "",
             f"Space: {rec['grid_size']} configurations, {rec['in_budget']} in budget. Trials: {rec['trials']}; "
             f"screening evaluations: {rec['screening_evaluations']}; full-fidelity evaluations: "
             f"{rec['full_fidelity_evaluations']}; rungs (share of every task's docs): {rec['rungs']}; trial time "
             f"{rec['seconds']} s.", *noise_line(rec)]
    if rec.get("overrides"):
        lines += ["", f"Reproduce: `{rec['command']}`"]
    return lines


def _table(configs: pd.DataFrame, ranking: bool = False) -> pd.DataFrame:
    """The Pareto front, or (``ranking``) every full-fidelity configuration in the recommendation's order, with the
    worst task's replica flip range and what it is not distinguished from when the search ran replicas."""
    if configs.empty:
        return configs
    columns = (["rank"] if ranking else []) + ["label", "avg_bits", "model_gb", "worst_task", "worst_flips",
                                                "flips_ci_low", "flips_ci_high"]
    if "worst_flips_rep_min" in configs and configs["worst_flips_rep_min"].notna().any():
        columns += ["worst_flips_rep_min", "worst_flips_rep_max"]
        columns += ["distinguished_from_next"] if ranking else ["not_distinguished_from"]
    shown = configs[[*columns, "passes"]].copy()
    shown["avg_bits"] = [f"{v:.3f}" for v in shown["avg_bits"]]
    shown["model_gb"] = [f"{v:.4f}" for v in shown["model_gb"]]
    for column in ("worst_flips", "flips_ci_low", "flips_ci_high", "worst_flips_rep_min", "worst_flips_rep_max"):
        if column in shown:
            shown[column] = ["" if pd.isna(v) else f"{100 * v:.1f}%" for v in shown[column]]
    return shown


def _html_table(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                    for row in table.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>"


def write(ctx, cfg, budget, trials: pd.DataFrame, configs: pd.DataFrame, front: pd.DataFrame, rec: dict) -> None:
    figures = pareto_plot(ctx, trials, front, rec, cfg.search.cost, budget, ctx.search_dir / "pareto") \
        if len(trials) and (trials["fidelity"] > 0).any() else []
    title = f"flipbench search {ctx.search_dir.name}"
    lines = _lines(cfg, budget, rec)
    sections = [("Ranking (full fidelity: passing by cost, then failing by how far they miss)", _table(configs, True)),
                ("Pareto front (full fidelity: cost vs worst-task flips)", _table(front))]
    pngs = [f for f in figures if f.suffix == ".png"]
    md = [f"# {title}", "", *lines]
    for heading, table in sections:
        md += ["", f"## {heading}", "", markdown_table(table) if len(table) else "No configuration reached full fidelity."]
    md += ["", *[f"![{f.stem}]({f.name})" for f in pngs]]
    (ctx.search_dir / "search_report.md").write_text("\n".join(md) + "\n")
    body = "".join(f"<p>{html.escape(line.replace('**', '').replace('`', ''))}</p>" for line in lines if line)
    tables = "".join(f"<h2>{html.escape(heading)}</h2>{_html_table(table)}" for heading, table in sections)
    imgs = "".join(f'<img alt="{html.escape(f.stem)}" src="data:image/png;base64,{base64.b64encode(f.read_bytes()).decode()}">'
                   for f in pngs)
    style = "body{font-family:sans-serif;max-width:1200px;margin:auto}td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}"
    (ctx.search_dir / "search_report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}{tables}{imgs}</body></html>\n")
