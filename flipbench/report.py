"""Report stage: summary.csv, plots, report.md and a self-contained report.html, from samples.parquet alone.

``python -m flipbench.report <run_dir>`` rebuilds all of it from disk without loading any model.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from flipbench import gate as gate_mod
from flipbench import metrics, modelsize, plots, scoring
from flipbench.config import FlipbenchConfig, from_saved, setting

KL_NOTE = ("KL is KL(baseline ‖ compressed) in nats: choice-level (softmax over the answer choices' raw "
           "log-likelihoods whatever the metric, one value per doc, statistics over docs; kl_norm_mean in summary.csv "
           "is the same over the metric's normalised scores) for multiple-choice tasks, gated by "
           "gate.max_choice_kl_mean; token-level (over the vocabulary, teacher-forced on the baseline's answer, "
           "statistics over all answer tokens, token-weighted, SEs clustered by doc; from a top-k baseline reference "
           "known only to an interval, whose upper end the gate judges) for generative tasks, gated by "
           "gate.max_token_kl_mean. The two scopes are on different scales and are never ranked or plotted on one axis.")
# noise-floor columns carried into summary.csv as noise_<name> (full table: noise_summary.csv)
NOISE_COLUMNS = ["flips", "flips_ci_low", "flips_ci_high", "lost", "gained", "kl_mean", "kl_mean_ci_low",
                 "kl_mean_ci_high", "kl_scope"]
TABLE_COLUMNS = ["task", "metric", "filter", "n", "acc_base", "acc_comp", "delta_acc", "delta_acc_ci", "flips",
                 "flips_ci", "lost", "gained", "lost_to_invalid", "lost_to_wrong", "label_loyalty", "kl_scope",
                 "kl_mean", "kl_mean_upper", "kl_p99", "kappa", "mcnemar_p", "mcnemar_p_holm", "n_nonfinite",
                 "noise_flips", "flips_excess"]
# token-level statistics (generative tasks), as llama.cpp's --kl-divergence prints them
TOKEN_TABLE = [("KL mean ± SE", "kl_mean", "kl_se"), ("KL p99", "kl_p99", None), ("KL max", "kl_max", None),
               ("KL median", "kl_median", None), ("same top ± SE", "same_top", "same_top_se"), ("mean Δp", "dp_mean", None),
               ("RMS Δp", "dp_rms", None), ("ln(PPL_c/PPL_b) ± SE", "ln_ppl_ratio", "ln_ppl_ratio_se")]
INTERVALS_NOTE = ("95% intervals: exact Clopper-Pearson for flips (and lost, gained in summary.csv); the Tango score "
                  "interval for the paired difference Δacc (correct coverage at small n and with no changed answer); "
                  "paired bootstrap over docs for label loyalty and mean KL. Δacc is in percentage points (pp). "
                  "mcnemar_p_holm: Holm-adjusted across the tasks' headline rows (per subject within a task in "
                  "summary.csv). n_nonfinite: docs with a non-finite log-prob on either side.")


def compressed_bits(cfg: FlipbenchConfig) -> float:
    """The bit width the method quantized to: the quantizers', SparseGPT's joint one; NaN otherwise."""
    bits = setting(cfg.compression, "bits")
    return np.nan if bits is None else bits


def pruning_label(compression: dict) -> str:
    """' 2:4', ' 50%' or ' −2 layers' for a pruned model's report title; '' for anything else."""
    if "dropped_layers" in compression:
        return f" −{len(compression['dropped_layers'])} layers"
    if "sparsity_measured" not in compression:
        return ""
    pattern = compression.get("pattern", "unstructured")
    return f" {pattern}" if pattern != "unstructured" else f" {100 * compression['sparsity']:.0f}%"


def build_summary(samples: pd.DataFrame, cfg: FlipbenchConfig, compression: dict, run_dir: Path,
                  baseline_size: dict | None = None) -> pd.DataFrame:
    """summary.csv: metrics per task, subject and category, with the compression's cost in front (model_bytes and
    baseline_bytes on one basis, flipbench/modelsize.py; NaN where either is unknown)."""
    sizes = modelsize.compared(baseline_size, compression)
    summary = metrics.summarize(samples, metrics_by_task=dict(cfg.suite.metrics), n_resamples=cfg.eval.bootstrap,
                                seed=cfg.eval.seed, correct_if=dict(cfg.suite.correct_if))
    summary.insert(0, "method", compression.get("method", cfg.compression.method))
    summary.insert(1, "bits", compressed_bits(cfg))
    summary.insert(2, "avg_bits", compression.get("avg_bits", np.nan))
    measured = compression.get("sparsity_measured") or {}
    summary.insert(3, "sparsity", measured.get("overall", np.nan))
    summary.insert(4, "params_kept", compression.get("params_kept", np.nan))
    summary.insert(5, "model_bytes", sizes[1] if sizes else np.nan)
    summary.insert(6, "baseline_bytes", sizes[0] if sizes else np.nan)
    noise_path = run_dir / "noise_samples.parquet"
    if noise_path.exists():
        noise = metrics.summarize(pd.read_parquet(noise_path), metrics_by_task=dict(cfg.suite.metrics),
                                  n_resamples=cfg.eval.bootstrap, seed=cfg.eval.seed, correct_if=dict(cfg.suite.correct_if))
        noise.to_csv(run_dir / "noise_summary.csv", index=False)
        keys = ["task", "group", "metric", "filter"]
        noise = noise[keys + NOISE_COLUMNS].rename(columns={c: f"noise_{c}" for c in NOISE_COLUMNS})
        summary = summary.merge(noise, on=keys, how="left")
        summary["flips_excess"] = summary["flips"] - summary["noise_flips"]
    replica_path = run_dir / "replica_summary.csv"  # compression.replicas (flipbench/replicas.py)
    if replica_path.exists():
        keys = ["task", "group", "metric", "filter"]
        replica = pd.read_csv(replica_path, keep_default_na=False, na_values=[""]).astype({"group": str})
        summary = summary.merge(replica, on=keys, how="left")
    return summary


def diverged_rows(summary: pd.DataFrame) -> dict[str, int]:
    """Task -> docs with a non-finite log-prob on either side (choice log-likelihoods, answer-token log-probs or
    token KL), from each task's headline whole-task row; tasks without any are left out."""
    rows = plots.headline_rows(summary)
    return {r["task"]: int(r["n_nonfinite"]) for _, r in rows.iterrows() if r.get("n_nonfinite", 0) > 0}


def worst_flips(samples: pd.DataFrame, output_type: str, n: int = 10, direction: str = "lost") -> pd.DataFrame:
    """The flips of one task type, ``lost`` (baseline right → compressed wrong) or ``gained`` (the reverse).

    Multiple choice: ranked by the baseline's margin on the gold answer (p of gold minus the best other choice, from
    the scores its metric predicts with): a lost answer the baseline gave with a wide margin is a damaging flip, a
    near-tie is not; a gained one is listed from the baseline's widest miss. Generative: by token KL (nats, mean over
    the baseline answer's tokens), largest first. The two kinds are never ranked together."""
    right, wrong = (1, 0) if direction == "lost" else (0, 1)
    rows = samples[(samples["correct_base"] == right) & (samples["correct_comp"] == wrong)
                   & (samples["output_type"] == output_type)].copy()
    rows = rows.drop_duplicates(["task", "group", "doc_id"])
    if output_type == "multiple_choice":
        rows["gold_margin"] = [_gold_margin(r) for _, r in rows.iterrows()]
        return rows.sort_values("gold_margin", ascending=direction != "lost", na_position="last", kind="stable").head(n)
    return rows.sort_values("kl", ascending=False, na_position="last", kind="stable").head(n)


def _gold_margin(row) -> float:
    """p_base of the (first) gold choice minus the largest other choice's p_base; NaN without a distribution."""
    p = np.asarray([np.nan if v is None else v for v in row["p_base"]], dtype=float)
    gold = scoring.gold_indices(row["target"])
    if not len(p) or not gold or gold[0] >= len(p):
        return float("nan")
    others = np.delete(p, gold[0])
    return float(p[gold[0]] - (others.max() if len(others) else 0.0))


def _answer(row, side: str) -> str:
    pred = str(row[f"pred_{side}"])
    probs = row[f"p_{side}"]
    if row["output_type"] == "multiple_choice" and len(row["choices"]) and pred.isdigit():
        i = int(pred)
        if len(probs) <= i:
            return str(row["choices"][i])
        p = probs[i]
        return f"{row['choices'][i]!s} (p={float(p):.2f})" if p is not None and p == p else f"{row['choices'][i]!s} (p=n/a)"
    generation = str(row.get(f"response_{side}", "") or "")
    if generation:  # the generation as text, then what the task's filter extracted from it
        shown = generation if len(generation) <= 200 else generation[:200] + "…"
        return f"{shown} → {pred}"
    return pred


def _gold_text(row) -> str:
    """MC: the gold choice text(s), ' | '-joined where the task lists several; generative: the target."""
    if row["output_type"] != "multiple_choice":
        return str(row["target"])
    return " | ".join(str(row["choices"][i]) for i in scoring.gold_indices(row["target"]) if i < len(row["choices"]))


def _fmt(value, column: str) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if column in ("n", "n_nonfinite"):
        return str(int(value))
    if column.startswith("mcnemar"):
        return f"{value:.3g}"
    if column == "delta_acc" or column == "flips_excess":
        return f"{100 * value:+.1f} pp"
    if column.startswith(("kl", "kappa")):
        return f"{value:.4f}"
    return f"{100 * value:.1f}%" if column not in ("avg_bits",) else f"{value:.2f}"


def task_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = summary[summary["group"] == "all"].copy()
    pct = lambda lo, hi: f"[{100 * lo:+.1f}, {100 * hi:+.1f}]" if np.isfinite([lo, hi]).all() else "n/a"  # noqa: E731
    rows["delta_acc_ci"] = [pct(a, b) + " pp" for a, b in zip(rows["delta_acc_ci_low"], rows["delta_acc_ci_high"])]
    rows["flips_ci"] = [pct(a, b).replace("+", "") + " %" for a, b in zip(rows["flips_ci_low"], rows["flips_ci_high"])]
    cols = [c for c in TABLE_COLUMNS if c in rows and not rows[c].isna().all()
            and not (c == "n_nonfinite" and not (rows[c] > 0).any())]
    return pd.DataFrame({c: [_fmt(v, c) for v in rows[c]] for c in cols})


def token_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Token-level KL statistics of the generative tasks' whole-task rows (empty when there are none)."""
    rows = summary[(summary["group"] == "all") & (summary["kl_scope"] == "token")]
    table = {"task": rows["task"].tolist(), "filter": rows["filter"].tolist(), "tokens": [_fmt(v, "n") for v in rows["n_tokens"]]}
    for label, column, se in TOKEN_TABLE:
        scale, unit = (100, " %") if column in ("same_top", "dp_mean", "dp_rms") else (1, "")
        table[label] = [("n/a" if not np.isfinite(v) else f"{scale * v:.4g}"
                         + (f" ± {scale * e:.2g}" if se and np.isfinite(e) else "") + unit)
                        for v, e in zip(rows[column], rows[se] if se else rows[column])]
    return pd.DataFrame(table)


# Bidirectional controls (LRE, RLE, PDF, LRO, RLO, LRI, RLI, FSI, PDI, LRM, RLM, ALM) can make user text read
# in another order than it is stored (the "Trojan Source" trick); reports show them as visible code points.
BIDI_CONTROLS = {c: f"<U+{ord(c):04X}>" for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"}
_BIDI_TABLE = str.maketrans(BIDI_CONTROLS)


def plain(text) -> str:
    """User text for a report: bidirectional controls made visible, HTML escaped (a Markdown viewer renders
    raw HTML, so report.md escapes it too); the caller escapes nothing else."""
    return html.escape(str(text).translate(_BIDI_TABLE))


# Markdown syntax in a table cell that could make user text act: a backslash first (so the escapes below stay
# escapes), the "](" that closes a link or image's text ([text](url), ![alt](url)), the cell separator and line
# breaks. Brackets elsewhere stay as they are (the tables' own intervals read "[8.5, 75.5]").
_MD_CELL = str.maketrans({"\\": "\\\\", "|": "\\|", "\n": " "})


def _md_cell(value) -> str:
    return plain(value).translate(_MD_CELL).replace("](", "\\](")


def markdown_table(frame: pd.DataFrame) -> str:
    cells = [[_md_cell(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def _interval(r, low: str, high: str, scale: float = 100, fmt: str = ".1f") -> str:
    a, b = r.get(low, np.nan), r.get(high, np.nan)
    return f" [{scale * a:{fmt}}, {scale * b:{fmt}}]" if np.isfinite(a) and np.isfinite(b) else ""


def _check_value(column: str, value: float) -> str:
    """A checked value in the unit a reviewer reads: percent for shares, nats for KL (an accuracy drop is positive)."""
    if value != value:
        return "not measured"
    if "kl" in column:
        return f"{value:.4g} nats"
    return f"{100 * value:.1f}%"


def failing_checks(verdict: dict) -> list[str]:
    out = []
    for task in verdict["tasks"]:
        for check in task["checks"]:
            if not check["pass"]:
                out.append(f"  - {task['task']}: {check['check'].removeprefix('max_').replace('_', ' ')} "
                           f"{_check_value(check['column'], check['value'])} ({check['column']}) exceeds the limit "
                           f"{_check_value(check['check'], check['limit'])} ({check['check']})")
    return out


def size_text(n: float) -> str:
    """Bytes in decimal units, three significant digits: 14.2 GB, 1.34 MB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def saved_text(baseline_bytes: float, model_bytes: float) -> str:
    """'1.07 MB saved, 4.98× smaller' where both sizes are known, else ''."""
    if not all(isinstance(v, (int, float, np.number)) and v > 0 for v in (baseline_bytes, model_bytes)):  # NaN, None
        return ""
    return f"{size_text(baseline_bytes - model_bytes)} saved, {baseline_bytes / model_bytes:.2f}× smaller"


def headline_text(summary: pd.DataFrame, verdict: dict, cfg: FlipbenchConfig | None = None,
                  manifest: dict | None = None, compression: dict | None = None) -> list[str]:
    """The decision block: verdict and failing checks (in percent, with their limits), what was compared (baseline
    id and revision, method and settings, average bits and size), then each task's headline with its intervals and
    the noise floor's excess."""
    manifest, compression = manifest or {}, compression or {}
    lines = [f"**Release gate: {verdict['verdict']}**"] + failing_checks(verdict)
    if cfg is not None:
        sizes = modelsize.compared(manifest.get("baseline_size"), compression)
        size = (f"; size {size_text(sizes[0])} → {size_text(sizes[1])} ({saved_text(*sizes[:2])}; {sizes[2]})"
                if sizes else "")
        settings = {k: compression.get(k) for k in ("bits", "group_size", "sym", "keep_fraction", "sparsity", "pattern")
                    if compression.get(k) not in (None, 0.0, "unstructured") or k == "bits" and compression.get(k)}
        avg = compression.get("avg_bits")
        lines.append(f"- baseline: {cfg.model.path} (revision {cfg.model.revision or 'default'}"
                     + (f", weights sha256 {str(manifest['baseline_fingerprint'])[:12]}…" if manifest.get("baseline_fingerprint") else "")
                     + ")")
        lines.append(f"- compressed: {compression.get('method', cfg.compression.method)}"
                     + (" " + ", ".join(f"{k}={v}" for k, v in settings.items()) if settings else "")
                     + (f"; {avg:.3f} average bits per weight" if isinstance(avg, (int, float)) and avg == avg else "") + size)
    for _, r in plots.headline_rows(summary).iterrows():
        excess = (f"; {100 * r['flips_excess']:+.1f} pp over the noise floor" if np.isfinite(r.get("flips_excess", np.nan))
                  else "")
        lines.append(f"- {r['task']} ({r['metric']}): accuracy {100 * r['acc_base']:.1f}% → {100 * r['acc_comp']:.1f}% "
                     f"(Δ {100 * r['delta_acc']:+.1f} pp{_interval(r, 'delta_acc_ci_low', 'delta_acc_ci_high')}); "
                     f"{100 * r['flips']:.1f}% of answers flipped{_interval(r, 'flips_ci_low', 'flips_ci_high')} "
                     f"(lost {100 * r['lost']:.1f}%, gained {100 * r['gained']:.1f}%); label loyalty "
                     f"{100 * r['label_loyalty']:.1f}%{excess}.")
    return lines


def provenance_lines(manifest: dict, cfg: FlipbenchConfig) -> list[str]:
    versions = manifest.get("versions") or {}
    compute = manifest.get("compute") or {}
    engine = (manifest.get("compared") or {}).get("compressed", {}).get("engine") or {"name": cfg.engine.name}
    return [", ".join(f"{k} {v}" for k, v in versions.items()),
            f"git {manifest.get('git_sha') or 'n/a'}; seed {cfg.eval.seed}; engine {engine.get('name')}; "
            f"device {manifest.get('device')}; {compute.get('threads', '?')} threads on {compute.get('cpu', '?')}"
            + (f", {compute['cuda']}" if compute.get("cuda") else "")
            + f"; started {manifest.get('started', '?')}",
            "prompts: " + (f"chat template ({cfg.suite.chat_template}), system prompt "
                           f"{'set' if cfg.suite.system_prompt else 'none'}, few-shot "
                           f"{'as turns' if cfg.suite.fewshot_as_multiturn else 'in one turn'}"
                           if str(cfg.suite.chat_template).lower() != "false" else "plain (no chat template)")
            + (f"; answers after {cfg.suite.think_end!r}" if cfg.suite.think_end else "") + "; the same on both sides"]


def make_plots(run_dir: Path, samples: pd.DataFrame, summary: pd.DataFrame, method: str, tag: str,
               correct_if: dict[str, str] | None = None) -> list[Path]:
    out = run_dir / "plots"
    made = plots.accuracy_vs_flips(summary, method, f"Accuracy hides flips — {tag}", out / "accuracy_vs_flips")
    made += plots.transition_matrices(samples, f"Right/wrong transitions — {tag}", out / "transitions")
    heads = plots.headline_rows(summary).assign(method=method)
    made += plots.kl_vs_flips(heads, f"KL vs flips — {tag}", out / "kl_vs_flips")
    mc = samples[samples["output_type"] == "multiple_choice"]
    if len(mc):
        made += plots.flips_by_margin(metrics.flip_rate_by_margin(mc, correct_if=correct_if), method, f"Where flips happen — {tag}",
                                      out / "flips_by_margin")
    made += plots.survival(samples, f"Where answers diverge — {tag}", out / "survival")
    for task in summary.loc[summary["level"] == "group", "task"].unique():
        made += plots.subject_flips(summary, task, method, f"Flips per subject: {task} — {tag}", out / f"subjects_{task}")
    return made


SCOPES = (("multiple_choice", "choice-level KL"), ("generate_until", "token-level KL, mean over the answer's tokens"))


def flips_table(samples: pd.DataFrame, output_type: str, direction: str = "lost") -> pd.DataFrame:
    worst = worst_flips(samples, output_type, direction=direction)
    table = pd.DataFrame({
        "task": worst["task"], "doc": worst["doc_id"].astype(str),
        "prompt (end)": ["…" + p[-160:] if len(p) > 160 else p for p in worst["prompt"]],
        "target": [_gold_text(r) for _, r in worst.iterrows()],
        "baseline": [_answer(r, "base") for _, r in worst.iterrows()],
        "compressed": [_answer(r, "comp") for _, r in worst.iterrows()],
    })
    if output_type == "multiple_choice":
        table["baseline margin on gold"] = [f"{v:+.2f}" if v == v else "n/a" for v in worst["gold_margin"]]
    table["KL (nats)"] = [_fmt(v, "kl") for v in worst["kl"]]
    return table


DIVERGE_NOTE = ("Greedy trajectories of the generative tasks (plots/survival.png: the share of answers whose two "
                "generations still agree after t tokens, and both sides' answer lengths). Below, the five flips "
                "(correctness changed) whose generations part earliest: the shared prefix, then each side's "
                "continuation from the first differing character. summary.csv: gen_identical, first_div_median, "
                "len_ratio_median, div_at_N (share diverged within N tokens), trunc_base/trunc_comp, and token "
                "agreement on the baseline's answer (top1_agree, top5_overlap, kl_reverse_mean, js_mean).")


def divergence_table(samples: pd.DataFrame, n: int = 5) -> pd.DataFrame | None:
    """The ``n`` generative flips whose generations part earliest (flipbench.trajectory), with the shared prefix and
    both continuations; None when no generative row carries the token-level trajectory columns."""
    from flipbench import trajectory

    if "gen_len_base" not in samples or not ((samples["output_type"] == "generate_until")
                                             & samples["gen_len_base"].notna()).any():  # not tokenized
        return None
    rows = trajectory.earliest_divergences(samples, n)
    parts = [trajectory.split_at_divergence(r) for _, r in rows.iterrows()]
    clip = lambda text, end=False: (text[:200] + "…" if len(text) > 200 else text) if not end else (  # noqa: E731
        "…" + text[-120:] if len(text) > 120 else text)
    return pd.DataFrame({
        "task": rows["task"].astype(str), "doc": rows["doc_id"].astype(str),
        "first divergent token": [str(int(v)) for v in rows["first_div_token"]],
        "baseline / compressed correct": [f"{int(b)} / {int(c)}" for b, c in zip(rows["correct_base"], rows["correct_comp"])],
        "shared prefix (end)": [clip(p, end=True) for p, _, _ in parts],
        "baseline continues": [clip(b) for _, b, _ in parts],
        "compressed continues": [clip(c) for _, _, c in parts],
    })


def prefill_text(summary: pd.DataFrame) -> str | None:
    """Prefill against answer per generative task (headline whole-task rows), None when no prompt was scored."""
    if "prefill_kl_mean" not in summary:
        return None
    rows = summary[(summary["group"] == "all") & summary["headline"].astype(bool)]
    rows = rows[np.isfinite(rows["prefill_kl_mean"].astype(float))]
    if rows.empty:
        return None
    pct = lambda v: "n/a" if not np.isfinite(v) else f"{100 * v:.1f}%"  # noqa: E731
    kl = lambda v, e: "n/a" if not np.isfinite(v) else f"{v:.4g}" + (f" ± {e:.2g}" if np.isfinite(e) else "")  # noqa: E731
    lines = [f"{r['task']}: prompt ({_fmt(r['prefill_tokens'], 'n')} tokens) KL {kl(r['prefill_kl_mean'], r['prefill_kl_se'])}"
             f" nats, top-1 agreement {pct(r['prefill_top1_agree'])}; answer ({_fmt(r['n_tokens'], 'n')} tokens) KL "
             f"{kl(r['kl_mean'], r['kl_se'])} nats, top-1 agreement {pct(r['top1_agree'])}" for _, r in rows.iterrows()]
    return ("Prefill against answer, both teacher-forced on the same prompt (KL(baseline ‖ compressed); damage in "
            "reading the prompt shows on the prompt's tokens, damage in generating on the answer's; summary.csv "
            "prefill_*): " + "; ".join(lines) + ".")


def think_text(summary: pd.DataFrame) -> str | None:
    """One line per generative task's headline row on its reasoning span (suite.think_end), None when no row has one."""
    rows = summary[(summary["group"] == "all") & summary["headline"].astype(bool)] if "think_unclosed_base" in summary \
        else summary.iloc[:0]
    rows = rows[np.isfinite(rows["think_unclosed_base"].astype(float)) | np.isfinite(rows["think_unclosed_comp"].astype(float))]
    if rows.empty:
        return None
    tokens = lambda v: "n/a" if not np.isfinite(v) else f"{v:.0f}"  # noqa: E731
    share = lambda v: "n/a" if not np.isfinite(v) else f"{100 * v:.0f}%"  # noqa: E731
    lines = [f"{r['task']}: median {tokens(r['think_len_median_base'])} tokens baseline, "
             f"{tokens(r['think_len_median_comp'])} compressed (comp/base ratio, median "
             + ("n/a" if not np.isfinite(r["think_len_ratio_median"]) else f"{r['think_len_ratio_median']:.2f}")
             + f"); span not closed {share(r['think_unclosed_base'])} / {share(r['think_unclosed_comp'])}, of which "
             f"cut at max_gen_toks {share(r['think_cut_base'])} / {share(r['think_cut_comp'])}"
             for _, r in rows.iterrows()]
    return ("Reasoning span (tokens before suite.think_end in the raw generation; summary.csv think_*): "
            + "; ".join(lines) + ".")


def sections(summary: pd.DataFrame, samples: pd.DataFrame) -> list[tuple[str, pd.DataFrame | str]]:
    """(heading, table or paragraph) pairs, in report order; both report formats render these."""
    out: list[tuple[str, pd.DataFrame | str]] = [("Per task", task_table(summary)), ("", INTERVALS_NOTE), ("", KL_NOTE)]
    tokens = token_table(summary)
    if len(tokens):
        out.append(("Token-level KL(baseline ‖ compressed) on the baseline's answers (nats; as llama.cpp --kl-divergence)",
                    tokens))
        prefill = prefill_text(summary)
        if prefill:
            out.append(("", prefill))
    diverge = divergence_table(samples)
    if diverge is not None:
        out.append(("Where answers diverge", DIVERGE_NOTE))
        out.append(("", diverge if len(diverge) else "No generative flip whose two generations differ."))
    think = think_text(summary)
    if think:
        out.append(("" if diverge is not None else "Where answers diverge", think))
    for output_type, scope in SCOPES:
        if (samples["output_type"] == output_type).any():
            order = ("widest baseline margin on the gold answer first" if output_type == "multiple_choice"
                     else "largest token KL first")
            for direction, what in (("lost", "baseline right → compressed wrong"),
                                    ("gained", "baseline wrong → compressed right")):
                flips = flips_table(samples, output_type, direction)
                out.append((f"Flips {direction}, {scope} ({what}; {order})",
                            flips if len(flips) else f"No {what} flips."))
    return out


def write_markdown(path: Path, title: str, head: list[str], parts: list, figures: list[Path]):
    lines = [f"# {plain(title)}", "", *map(plain, head), ""]
    for heading, body in parts:
        text = (body if isinstance(body, str) else f"![{body.stem}](plots/{body.name})" if isinstance(body, Path)
                else markdown_table(body))
        lines += ([f"## {heading}", ""] if heading else []) + [text, ""]
    shown = {body for _, body in parts if isinstance(body, Path)}
    lines += ["## Plots", ""] + [f"![{f.stem}](plots/{f.name})" for f in figures if f.suffix == ".png" and f not in shown]
    path.write_text("\n".join(lines) + "\n")


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{plain(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{plain(v)}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def write_html(path: Path, title: str, head: list[str], parts: list, figures: list[Path]):
    """Self-contained: plots inlined as base64 PNG, every piece of text escaped, no external references."""
    def img(f: Path) -> str:
        return (f'<figure><img alt="{html.escape(f.stem)}" src="data:image/png;base64,'
                f'{base64.b64encode(f.read_bytes()).decode()}"></figure>')

    shown = {part for _, part in parts if isinstance(part, Path)}
    imgs = "".join(img(f) for f in figures if f.suffix == ".png" and f not in shown)
    heads = "".join(f"<p>{plain(line.replace('**', ''))}</p>" for line in head)
    body = "".join((f"<h2>{plain(heading)}</h2>" if heading else "")
                   + (f"<p>{plain(part)}</p>" if isinstance(part, str) else img(part) if isinstance(part, Path)
                      else _html_table(part))
                   for heading, part in parts)
    # wide tables scroll inside their own box instead of running off the page
    style = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:0 1em}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}img{max-width:100%}"
             ".scroll{overflow-x:auto}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{plain(title)}</title>"
                    f"<style>{style}</style></head><body><h1>{plain(title)}</h1>{heads}"
                    f"{body}<h2>Plots</h2>{imgs}</body></html>\n")


def sample_lines(info: dict | None) -> list[str]:
    """A sampled run's (``suite.sample``, a search's screening rung) warning: the share and each task's docs."""
    if not info:
        return []
    shares = sorted({t["share"] for t in info.values()})
    docs = "; ".join(f"{task} {t['docs']} of {t['available']}" for task, t in sorted(info.items()))
    # no apostrophes: report.md escapes HTML, and a raw &#x27; reads badly
    return [f"**Screening trial: evaluated on a seeded share {', '.join(f'{s:g}' for s in shares)} of the docs of each "
            f"task** ({docs}; suite.sample, a prefix of the sequential gate order). Every number below is computed on "
            "those docs only: a screening measurement, not a full one."]


def sequential_lines(info: dict | None) -> list[str]:
    """Per task of a sequential run: docs used of docs available, the upper bounds at stopping and the decision."""
    if not info:
        return []
    lines = [f"**Sequential gate: {info['verdict']}** (alpha={info['alpha']} over tasks x checks x looks; exact "
             "without-replacement bounds on the whole benchmark, docs/sequential.md; choice KL bounded as min(KL, clip)). "
             "The other summary columns are "
             "computed on the docs evaluated only: a gate decision, not a full measurement."]
    for task, t in info.items():
        if isinstance(t, dict) and "docs" in t:
            bounds = ", ".join(f"{k.removeprefix('max_')} in [{c['lower']:.4f}, {c['upper']:.4f}] (limit {c['limit']:g})"
                               for k, c in t["checks"].items())
            bounds += "".join(f"; {k.removeprefix('max_')} clipped at {v:g} nats" for k, v in (t.get("clip") or {}).items())
            lines.append(f"- {task}: {t['decision']} on {t['docs']} of {t['available']} docs ({t['looks']} planned looks of "
                         f"{t['chunk']}){'; ' + bounds if bounds else ''}")
    return lines


def gate_lines(verdict: dict, detail: bool = True) -> list[str]:
    on = {"point": "point estimates (token KL from a top-k reference: the upper end of its interval)",
          "upper_ci": "the pessimistic end of each 95% interval (Δacc: the Tango score interval)"}[verdict.get("on", "point")]
    lines = [f"Gate checked on {on} (gate.on={verdict.get('on', 'point')})."] if verdict["verdict"] != "not set" else []
    for task in verdict["tasks"] if detail else []:
        for check in task["checks"]:
            if not check["pass"]:
                lines.append(f"- FAIL {task['task']}: {check['column']} = {check['value']:.4f} exceeds {check['check']} = {check['limit']}"
                             if check["value"] == check["value"] else
                             f"- FAIL {task['task']}: {check['check']} = {check['limit']} cannot be judged: {check['column']} is not measured")
    return lines


def noise_lines(manifest: dict, summary: pd.DataFrame) -> list[str]:
    """What the noise floor perturbed, and each task's flips beside it."""
    noise = manifest.get("noise_floor")
    if not noise or "noise_flips" not in summary:
        return []
    lines = [f"Noise floor ({noise['mode']}): the baseline against itself at batch size {noise['batch_size']} in "
             f"{noise['dtype']} (baseline: batch size {noise['baseline_batch_size']}, {noise['baseline_dtype']})."]
    for _, r in plots.headline_rows(summary).iterrows():
        lines.append(f"- {r['task']}: flips {100 * r['flips']:.1f}%, noise floor {100 * r['noise_flips']:.1f}% "
                     f"[{100 * r['noise_flips_ci_low']:.1f}, {100 * r['noise_flips_ci_high']:.1f}], in excess of it "
                     f"{100 * r['flips_excess']:+.1f} pp; noise mean KL {r['noise_kl_mean']:.2g} nats ({r['noise_kl_scope']}).")
    return lines


def replica_lines(summary: pd.DataFrame) -> list[str]:
    """The compression noise, beside the evaluation noise floor: flips over K compressions of the same baseline."""
    if "flips_rep_min" not in summary:
        return []
    rows = summary[(summary["group"] == "all") & summary["headline"]].drop_duplicates("task")
    return [f"- compression noise ({int(r['replicas'])} replicas, other calibration draws): {r['task']} flips "
            f"{100 * r['flips_rep_min']:.1f}–{100 * r['flips_rep_max']:.1f}% (median {100 * r['flips_rep_median']:.1f}%); "
            f"{100 * r['flips_robust']:.1f}% of docs flip in every replica, {100 * r['flips_unstable']:.1f}% in some"
            for _, r in rows.iterrows() if not np.isnan(r["flips_rep_min"])]


def token_kl_bound_lines(summary: pd.DataFrame, topk: int) -> list[str]:
    """Per generative task whose token KL came from a top-k baseline reference, the interval holding the exact
    mean KL (none when it is exact: full reference, or the baseline model itself), and what the gate judges."""
    if "kl_mean_upper" not in summary:
        return []
    rows = summary[(summary["group"] == "all") & (summary["kl_scope"] == "token")].drop_duplicates("task")
    lines = []
    for _, r in rows.iterrows():
        if not r["kl_mean_upper"] > r["kl_mean"]:
            continue
        bound = float(r.get("kl_mean_ci_high", np.nan))
        upper_ci = (f"; under gate.on=upper_ci it judges {bound + r['kl_mean_upper'] - r['kl_mean']:.4g}, the bootstrap "
                    "bound plus the width of the top-k interval") if np.isfinite(bound) else ""
        lines.append(f"- {r['task']}: token KL from a top-{topk} baseline reference: the exact mean KL lies in "
                     f"[{r['kl_mean']:.4g}, {r['kl_mean_upper']:.4g}] nats (point estimate kl_mean, the lower end; the "
                     f"gate judges the upper end{upper_ci}).")
    return lines


def build(run_dir: Path, cfg: FlipbenchConfig) -> dict:
    """Summary, gate verdict, plots and reports for one run directory; returns the gate verdict."""
    run_dir = Path(run_dir)
    samples = pd.read_parquet(run_dir / "samples.parquet")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    compression = manifest.get("compression") or {"method": cfg.compression.method}
    summary = build_summary(samples, cfg, compression, run_dir, manifest.get("baseline_size"))
    summary.to_csv(run_dir / "summary.csv", index=False)
    verdict = gate_mod.evaluate_gate(summary, cfg.gate)
    if manifest.get("sequential"):  # a sequential run's verdict is its sequential decision (docs/sequential.md)
        from flipbench.sequential import gate_verdict

        verdict = gate_verdict(manifest["sequential"], verdict)
    method = compression.get("method", cfg.compression.method)
    bits = "" if np.isnan(compressed_bits(cfg)) else f" w{compressed_bits(cfg)}"
    tag = f"{cfg.model.name} · {method}{bits}{pruning_label(compression)}"
    figures = make_plots(run_dir, samples, summary, method, tag, dict(cfg.suite.correct_if)) if cfg.output.plots else []
    head = headline_text(summary, verdict, cfg, manifest, compression)
    diverged = diverged_rows(summary)
    if diverged:
        per_task = ", ".join(f"{task}: {n}" for task, n in diverged.items())
        head.insert(1, f"**DIVERGED: non-finite log-probabilities on {sum(diverged.values())} docs** ({per_task}; "
                       "either side); accuracy and flips count them as scored by lm-eval, KL statistics use the finite "
                       "values only, and the gate fails unless gate.max_nonfinite allows them.")
    head[1:1] = sample_lines(manifest.get("sample"))
    head += [f"- note: {note}" for note in manifest.get("data_notes") or []]
    head += sequential_lines(manifest.get("sequential")) + gate_lines(verdict, detail=False) + noise_lines(manifest, summary) + replica_lines(summary)
    head += token_kl_bound_lines(summary, cfg.eval.token_kl_topk)
    title = f"flipbench: {tag} vs baseline"
    parts = sections(summary, samples) + [("Provenance", "\n".join(provenance_lines(manifest, cfg)))]
    survival_png = [f for f in figures if f.name == "survival.png"]
    at = [i for i, (heading, _) in enumerate(parts) if heading == "Where answers diverge"]
    if survival_png and at:  # the plot opens its section
        parts.insert(at[0] + 1, ("", survival_png[0]))
    write_markdown(run_dir / "report.md", title, head, parts, figures)
    write_html(run_dir / "report.html", title, head, parts, figures)
    return {**verdict, "diverged_docs": sum(diverged.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild summary.csv, reports and plots of a run from samples.parquet.")
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    if not (args.run_dir / "samples.parquet").exists():
        print(f"flipbench: error: {args.run_dir} has no samples.parquet; give a run directory", file=sys.stderr)
        return 2
    cfg = OmegaConf.to_object(from_saved(OmegaConf.load(args.run_dir / "config.yaml")))
    verdict = build(args.run_dir, cfg)
    print(f"flipbench: rebuilt {args.run_dir}  gate: {verdict['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
