"""Plots a reviewer can paste as they are: titles, axes with units, legends, one colour per method.

Each function takes plain tables and a path stem, and writes ``<stem>.png`` (150 dpi) and ``<stem>.svg``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
# Task names, subjects and model names are the user's text: a '$' in them must print as a '$', not start
# mathtext (an unbalanced or invalid formula would crash the report stage after all the expensive work).
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from flipbench.stats import clopper_pearson  # noqa: E402

METHOD_COLOURS = {"baseline": "#4d4d4d", "none": "#999999", "rtn": "#1f77b4", "gptq": "#ff7f0e", "tacq": "#2ca02c",
                  "checkpoint": "#9467bd", "magnitude": "#8c564b", "wanda": "#e377c2", "sparsegpt": "#bcbd22",
                  "layerdrop": "#17becf"}
LOST, GAINED = "#d62728", "#2ca02c"


def colour(method: str) -> str:
    return METHOD_COLOURS.get(method, "#17becf")


def save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    # "tight" grows the canvas to every artist (long axis labels, legends outside): nothing is clipped
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _exact_bounds(successes, trials) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson 95% bounds in percent per (successes, trials) pair; NaN for an empty bin."""
    bounds = np.array([clopper_pearson(k, n) for k, n in zip(successes, trials)], dtype=float).reshape(-1, 2)
    return 100 * bounds[:, 0], 100 * bounds[:, 1]


def headline_rows(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary["headline"] & (summary["group"] == "all")].reset_index(drop=True)


def accuracy_vs_flips(summary: pd.DataFrame, method: str, title: str, stem: Path) -> list[Path]:
    """The 'accuracy hides flips' chart: both accuracies beside the flips, flips stacked as lost + gained."""
    rows = headline_rows(summary)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows) + 2), 4.2))
    w = 0.26
    ax.bar(x - w, 100 * rows["acc_base"], w, color=colour("baseline"), label="accuracy, baseline")
    ax.bar(x, 100 * rows["acc_comp"], w, color=colour(method), label=f"accuracy, {method}")
    ax.bar(x + w, 100 * rows["lost"], w, color=LOST, label="flips: lost (right → wrong)")
    ax.bar(x + w, 100 * rows["gained"], w, bottom=100 * rows["lost"], color=GAINED, label="flips: gained (wrong → right)")
    for xi, (_, r) in zip(x, rows.iterrows()):
        ax.annotate(f"Δacc {100 * r['delta_acc']:+.1f}\nflips {100 * r['flips']:.1f}", (xi + w, 100 * r["flips"]),
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [f"{t}\n({m})" for t, m in zip(rows["task"], rows["metric"])], fontsize=8)
    ax.set_ylabel("share of questions (%)")
    ax.set_xlabel("task (headline metric)")
    ax.set_title(title)
    ax.set_ylim(0, 128)  # headroom so the legend never covers a bar at 100%
    ax.set_yticks(range(0, 101, 20))
    ax.legend(fontsize=7, loc="upper center", ncol=4)
    return save(fig, stem)


def transition_matrices(samples: pd.DataFrame, title: str, stem: Path) -> list[Path]:
    """Per task, counts of (baseline right/wrong) × (compressed right/wrong) on the headline filter."""
    tasks = sorted(samples["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = samples[samples["task"] == task]
        rows = rows[rows["filter"] == rows["filter"].iloc[0]]
        counts = np.array([[((rows.correct_base == b) & (rows.correct_comp == c)).sum() for c in (1, 0)] for b in (1, 0)])
        ax.imshow(counts, cmap="Blues")
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, f"{n}\n{100 * n / max(len(rows), 1):.1f}%", ha="center", va="center", fontsize=8,
                    color="white" if n > counts.max() / 2 else "black")
        ax.set_xticks([0, 1], ["right", "wrong"])
        ax.set_yticks([0, 1], ["right", "wrong"])
        ax.set_xlabel("compressed answer")
        ax.set_ylabel("baseline answer")
        ax.set_title(task, fontsize=9)
    fig.suptitle(title + " — docs per cell (count, % of task)")
    return save(fig, stem)


KL_AXIS = {"choice": "mean choice-level KL(baseline ‖ compressed) per doc (nats)",
           "token": "mean token-level KL(baseline ‖ compressed) per answer token (nats)"}


def kl_vs_flips(points: pd.DataFrame, title: str, stem: Path) -> list[Path]:
    """Flips against mean KL, one panel per KL scope (choice and token KL are on different scales).

    ``points`` has task, method, kl_scope, kl_mean, flips (and optionally a label per point).
    """
    scopes = [s for s in ("choice", "token") if (points["kl_scope"] == s).any()] or ["choice"]
    fig, axes = plt.subplots(1, len(scopes), figsize=(6 * len(scopes), 4.2), squeeze=False)
    markers = dict(zip(sorted(points["task"].unique()), "osD^vP*X"))
    for ax, scope in zip(axes[0], scopes):
        for (method, task), rows in points[points["kl_scope"] == scope].groupby(["method", "task"]):
            ax.scatter(rows["kl_mean"], 100 * rows["flips"], color=colour(method), marker=markers[task], s=40,
                       label=f"{method} · {task}")
            for _, r in rows.iterrows():
                if "label" in r and isinstance(r["label"], str):
                    ax.annotate(r["label"], (r["kl_mean"], 100 * r["flips"]), fontsize=6, xytext=(3, 3),
                                textcoords="offset points")
        ax.set_xlabel(KL_AXIS[scope], fontsize=8)
        ax.set_ylabel("flips (% of questions)")
        ax.set_title(f"{scope}-level KL", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return save(fig, stem)


def flips_by_margin(by_margin: pd.DataFrame, method: str, title: str, stem: Path) -> list[Path]:
    """Flip rate per bin of the baseline's confidence margin (top-1 minus top-2 choice probability)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    groups = list(by_margin.groupby("task"))
    for k, (task, rows) in enumerate(groups):
        x = np.arange(len(rows)) + 0.2 * (k - (len(groups) - 1) / 2)  # dodge the tasks so the bars do not overlap
        low, high = _exact_bounds(rows["flips"], rows["n"])
        rate = 100 * rows["flip_rate"].to_numpy(dtype=float)
        ax.errorbar(x, rate, yerr=[rate - low, high - rate], marker="o", capsize=3, linestyle=":", label=f"{task} ({method})")
    if groups:  # docs per bin under each tick, one count per task in legend order
        counts = np.array([rows["n"].to_numpy() for _, rows in groups])  # (tasks, bins)
        labels = [f"{b}\nn = {' / '.join(str(int(c)) for c in counts[:, i])}" for i, b in enumerate(groups[0][1]["bin"])]
        ax.set_xticks(np.arange(counts.shape[1]), labels, fontsize=8)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("baseline margin p(top-1) − p(top-2) (probability); bars: exact 95% interval")
    ax.set_ylabel("flip rate (% of questions in the bin)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return save(fig, stem)


def subject_flips(summary: pd.DataFrame, task: str, method: str, title: str, stem: Path) -> list[Path]:
    """Flips per group (subject) of one task, lost and gained stacked, worst first."""
    rows = summary[(summary["task"] == task) & (summary["level"] == "group") & summary["headline"]]
    rows = rows.sort_values("flips").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.3 * len(rows) + 1.5)))
    y = np.arange(len(rows))
    ax.barh(y, 100 * rows["lost"], color=LOST, label="lost (right → wrong)")
    ax.barh(y, 100 * rows["gained"], left=100 * rows["lost"], color=GAINED, label="gained (wrong → right)")
    flips = 100 * rows["flips"].to_numpy(dtype=float)
    ax.errorbar(flips, y, xerr=[flips - 100 * rows["flips_ci_low"], 100 * rows["flips_ci_high"] - flips], fmt="none",
                ecolor="black", capsize=2, linewidth=0.8, label="flips, exact 95% interval")
    ax.set_yticks(y, rows["group"], fontsize=7)
    ax.set_xlabel(f"flips (% of the subject's questions, {method})")
    ax.set_ylabel("subject")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return save(fig, stem)


def flip_overlap(matrix: pd.DataFrame, title: str, stem: Path) -> list[Path]:
    """Heatmap of the Jaccard overlap between the sets of docs each sweep member flips (0: disjoint, 1: same)."""
    names = list(matrix.index)
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 3, 0.8 * len(names) + 2))
    image = ax.imshow(matrix.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(matrix.to_numpy(dtype=float)):
        ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8,
                color="white" if value <= 0.6 else "black")  # NaN (no flips at all) compares False: black on blank
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(image, ax=ax, label="Jaccard |A ∩ B| / |A ∪ B| of flipped docs")
    ax.set_title(title, fontsize=9)
    return save(fig, stem)


def survival(samples: pd.DataFrame, title: str, stem: Path) -> list[Path]:
    """Left: survival S(t) per generative task, the share of answers whose two greedy generations still agree on
    their first t tokens (flipbench.trajectory); right: both sides' answer lengths in tokens. Nothing is drawn
    (no file) when no generative row carries the trajectory columns."""
    from flipbench.trajectory import GENERATIVE, survival as survival_at

    if "gen_identical" not in samples:
        return []
    gen = samples[(samples["output_type"] == GENERATIVE) & samples["gen_identical"].notna()]
    gen = gen.drop_duplicates(["task", "group", "doc_id"])
    if gen.empty:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.4, 1]})
    lengths = gen[["gen_len_base", "gen_len_comp"]].to_numpy(dtype=float)
    if not np.isfinite(lengths).any():  # string identity only (no tokenizer): nothing to draw per token
        return []
    longest = int(np.nanmax(lengths))
    t = np.arange(0, max(longest, 1) + 1)
    tasks = list(dict.fromkeys(gen["task"]))
    for i, task in enumerate(tasks):
        rows = gen[gen["task"] == task]
        left.step(t, 100 * survival_at(rows, t), where="post", color=f"C{i}", label=f"{task} (n={len(rows)})")
    left.set_xlabel("answer tokens generated, t (baseline's tokens)")
    left.set_ylabel("answers still identical after t tokens (%)")
    left.set_ylim(-2, 102)
    left.set_title("Survival of the greedy trajectory", fontsize=9)
    left.legend(fontsize=7)
    bins = np.linspace(0, max(longest, 1), min(40, max(longest, 1)) + 1)
    right.hist(gen["gen_len_base"].to_numpy(dtype=float), bins=bins, color=colour("baseline"), alpha=0.6,
               label="baseline")
    right.hist(gen["gen_len_comp"].to_numpy(dtype=float), bins=bins, color=LOST, alpha=0.45, label="compressed")
    for budget in sorted(set(gen["max_gen_toks"].dropna())) if "max_gen_toks" in gen else []:
        right.axvline(budget, color="#555555", linestyle="--", linewidth=1,
                      label=f"max_gen_toks = {int(budget)}" if budget == gen["max_gen_toks"].max() else None)
    right.set_xlabel("answer length (tokens)")
    right.set_ylabel("answers (count)")
    right.set_title("Answer lengths, both sides", fontsize=9)
    right.legend(fontsize=7)
    fig.suptitle(title)
    return save(fig, stem)
