"""The search's tables: trials.csv, configurations.csv, pareto.csv and recommendation.json, rebuilt from the study and
the trial runs on disk (so a resumed search writes them whole). Plot and report: :mod:`flipbench.search.report`.

trials.csv has one row per trial × rung × task (a trial skipped before any evaluation has one row, no task);
``fidelity`` is the share of every task's docs the rung evaluated (a seeded random sample below 1; ``n`` is what
the task had of its ``available`` docs), with the screening bounds (:mod:`flipbench.search.screening`) and, at full
fidelity with compression replicas, the replica flip range. configurations.csv has one row per configuration scored
at full fidelity, in the recommendation's ranking; pareto.csv those that no other full-fidelity configuration beats
on both cost and worst-task flips.
"""

from __future__ import annotations

import json
import shlex

from dataclasses import replace

import pandas as pd

from flipbench.gate import evaluate_gate, worst_excess
from flipbench.search import noise, report, screening
from flipbench.search.study import Context, headline, rung_verdict

FAMILY_ERROR = 0.05  # the chance, over the whole search, that the recommendation passes only by luck (adjusted bounds)

METRIC_COLUMNS = ["task", "metric", "n", "acc_base", "acc_comp", "delta_acc", "delta_acc_ci_low", "delta_acc_ci_high",
                  "flips", "flips_ci_low", "flips_ci_high", "lost", "gained", "kl_mean", "kl_mean_ci_low",
                  "kl_mean_ci_high"]
BOUNDS = ["available", *(f"{stem}_{end}" for stem in screening.BOUND_COLUMNS.values() for end in ("lower", "upper"))]


def _trial_head(trial, ctx: Context, param_keys: list[str]) -> dict:
    label = trial.user_attrs.get("label")
    point = ctx.points.get(label)
    params = dict(point.params) if point else {}
    cost = ctx.costs.get(label, {})
    head = {"trial": trial.number, "state": trial.state.name.lower(), "label": label,
            "method": point.method if point else None}
    head |= {key: params.get(key) for key in param_keys}
    head |= {"avg_bits": cost.get("avg_bits"), "model_gb": cost.get("model_bytes", float("nan")) / 1e9,
             "cost": cost.get("cost"), "skipped": trial.user_attrs.get("skipped", "")}
    return head


def _replica_range(ctx: Context, label: str, task) -> dict:
    """A full-fidelity row's replica flip range: the run's replica columns; a data-free method in a replica search
    ran once (identical by construction): its one value; no replicas in the search: empty."""
    if any(not pd.isna(task.get(c, float("nan"))) for c in noise.RANGE_COLUMNS):
        return {c: task.get(c) for c in noise.RANGE_COLUMNS}
    if ctx.noise and label not in ctx.noise:
        return {"flips_rep_min": task["flips"], "flips_rep_median": task["flips"], "flips_rep_max": task["flips"],
                "replicas": 1}
    return dict.fromkeys(noise.RANGE_COLUMNS, float("nan"))


def trials_table(ctx: Context, study) -> pd.DataFrame:
    param_keys = list(dict.fromkeys(k for p in ctx.points.values() for k, _ in p.params))
    rungs = {ctx.rung_name(k): k for k in range(len(ctx.shares))}
    rows = []
    for trial in study.get_trials(deepcopy=False):
        head = _trial_head(trial, ctx, param_keys)
        runs = trial.user_attrs.get("runs", {})
        if not runs:
            rows.append(head | {"fidelity": 0, "full_fidelity": False})
            continue
        for name, rel in runs.items():
            run_dir = ctx.search_dir / rel
            if not (run_dir / "summary.csv").exists():
                continue
            tasks = headline(run_dir)
            full = rungs[name] == len(ctx.shares) - 1
            passes, violation, _ = rung_verdict(ctx, run_dir, full)
            # the bounds on the full-benchmark values (at full fidelity: the exact values)
            screen = screening.screen(tasks, ctx.gate, ctx.available, ctx.alpha_check)
            for _, task in tasks.iterrows():
                bounds = screen.tasks.get(task["task"], {})
                rows.append(head | {"fidelity": ctx.shares[rungs[name]], "full_fidelity": full}
                            | task[METRIC_COLUMNS].to_dict() | {c: bounds.get(c, float("nan")) for c in BOUNDS}
                            | (_replica_range(ctx, head["label"], task) if full else
                               dict.fromkeys(noise.RANGE_COLUMNS, float("nan")))
                            | {"passes": passes, "violation": violation,
                               "screen": "" if full else screen.decision,
                               "seconds": trial.user_attrs.get("seconds", {}).get(name), "run": rel})
    return pd.DataFrame(rows)


def configurations(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration scored at full fidelity: its cost, worst-task flips (and that task's replica flip
    range), verdict; sorted by cost, then worst-task flips."""
    full = trials[trials["full_fidelity"] == True].copy()  # noqa: E712 (the column holds NaN for skipped rows)
    if full.empty:
        return full
    full = full.drop_duplicates(["label", "task"], keep="last")
    worst = full.sort_values("flips", ascending=False, kind="stable").drop_duplicates("label")
    worst = worst.rename(columns={"task": "worst_task", "flips": "worst_flips", **noise.WORST})
    return worst.sort_values(["cost", "worst_flips"], kind="stable").reset_index(drop=True)


def ranked(configs: pd.DataFrame) -> pd.DataFrame:
    """The recommendation's order: passing configurations by cost (then worst-task flips), then failing ones by how
    far they miss (then cost); adds ``rank`` (1: the recommendation, or the closest when none passes)."""
    passing = configs[configs["passes"] == True]  # noqa: E712
    failing = configs[configs["passes"] != True].sort_values(["violation", "cost"], kind="stable")  # noqa: E712
    out = pd.concat([passing, failing]).reset_index(drop=True)
    out.insert(0, "rank", range(1, len(out) + 1))
    return out


def compared(trials: pd.DataFrame) -> int:
    """Configurations the selection looked at: every one scored at any rung (screening included, since those docs
    are among the full-fidelity ones)."""
    return int(trials.loc[trials["fidelity"] > 0, "label"].nunique()) if len(trials) else 0


def confirm(ctx: Context, cfg, configs: pd.DataFrame, m: int) -> pd.DataFrame:
    """Re-judge every full-fidelity configuration so that the recommendation cannot pass by accident.

    1. ``flipbench``'s own gate (:func:`flipbench.gate.evaluate_gate` with the user's gate, as the run wrote it)
       on the configuration's full-fidelity run: a recommendation is always a run the gate passes.
    2. Where the search judges bounds (``search.upper_bound`` or ``gate.on=upper_ci``), the bounds are adjusted
       for the m configurations compared (Bonferroni): the run's samples are summarised again with each interval
       at confidence 1 - 0.05/m and judged on its pessimistic end, so the chance that the cheapest passing
       configuration passes only by luck stays under 5% over the whole search. Under point estimates there is
       no interval to widen; the report says the selection is unadjusted.
    Adds gate_verdict, passes_adjusted, violation_adjusted, confidence; ``passes`` becomes the conjunction.
    """
    from flipbench import metrics

    out = configs.copy()
    upper = ctx.upper(final=True)
    confidence = 1 - FAMILY_ERROR / max(m, 1) if upper else float("nan")
    gate_verdicts, adjusted, excess = [], [], []
    for _, row in out.iterrows():
        run_dir = ctx.search_dir / row["run"]
        gate_verdicts.append(evaluate_gate(pd.read_csv(run_dir / "summary.csv"), ctx.gate)["verdict"])
        if not upper:
            adjusted.append(bool(row["passes"]))
            excess.append(float(row["violation"]))
            continue
        summary = metrics.summarize(pd.read_parquet(run_dir / "samples.parquet"), metrics_by_task=dict(cfg.suite.metrics),
                                    n_resamples=cfg.eval.bootstrap, seed=cfg.eval.seed,
                                    correct_if=dict(cfg.suite.correct_if), confidence=confidence)
        verdict = evaluate_gate(summary, replace(ctx.gate, on="upper_ci"))
        adjusted.append(verdict["verdict"] != "FAIL")
        excess.append(max(worst_excess(verdict), 0.0))
    out["gate_verdict"], out["passes_adjusted"], out["violation_adjusted"] = gate_verdicts, adjusted, excess
    out["confidence"] = confidence
    out["passes_unadjusted"] = out["passes"].astype(bool)
    out["passes"] = out["passes_unadjusted"] & out["passes_adjusted"] & (out["gate_verdict"] != "FAIL")
    out["violation"] = out[["violation", "violation_adjusted"]].max(axis=1)
    return out


def pareto(configs: pd.DataFrame) -> pd.DataFrame:
    """Configurations no other beats on both cost and worst-task flips (lower is better on both)."""
    keep, best_flips = [], float("inf")
    for index, row in configs.iterrows():  # sorted by cost, then flips: a point is kept if it lowers the flips
        if row["worst_flips"] < best_flips:
            keep.append(index)
            best_flips = row["worst_flips"]
    return configs.loc[keep].reset_index(drop=True)


def screening_budget(ctx: Context, trials: pd.DataFrame) -> dict:
    """How screening spent its error budget: alpha (gate.alpha) over screening rungs x checks (union bound)."""
    screened = trials[(trials["fidelity"] > 0) & (trials["full_fidelity"] != True)] if len(trials) else trials  # noqa: E712
    dropped = screened[(screened["screen"] == "drop") & (screened["state"] == "pruned")] if "screen" in screened \
        else screened.iloc[0:0]
    return {"alpha": ctx.gate.alpha, "screening_rungs": len(ctx.shares) - 1,
            "checks": screening.n_checks(sorted(ctx.available), ctx.gate), "alpha_per_check": ctx.alpha_check,
            "available": ctx.available, "dropped": sorted(set(dropped["label"])) if len(dropped) else []}


def recommend(ctx: Context, trials: pd.DataFrame, configs: pd.DataFrame, overrides: list[str], cost_key: str,
              m: int = 0) -> dict:
    """The first of the ranked configurations (:func:`ranked`): the cheapest that passes every limit at full fidelity
    (after :func:`confirm`), else the one nearest to passing; with the compression-noise comparison to the next."""
    upper = ctx.upper(final=True)
    counts = {"grid_size": len(ctx.points), "in_budget": sum(c["in_budget"] for c in ctx.costs.values()),
              "judged_on": "upper_ci" if upper else "point",
              "multiplicity": ({"method": "bonferroni", "configurations_compared": m,
                                "confidence": 1 - FAMILY_ERROR / max(m, 1)} if upper else
                               {"method": "none: point estimates have no interval to adjust",
                                "configurations_compared": m}),
              "trials": int(trials["trial"].nunique()) if len(trials) else 0,
              "full_fidelity_evaluations": int(len(configs)),
              "screening_evaluations": int(trials.loc[(trials["fidelity"] > 0) & (trials["full_fidelity"] != True),  # noqa: E712
                                                      ["label", "fidelity"]].drop_duplicates().shape[0]) if len(trials) else 0,
              "rungs": ctx.shares, "cost": cost_key, "screening": screening_budget(ctx, trials)}
    if configs.empty:
        return {"status": "none passes", "passes": False, "overrides": None, "avg_bits": None, "metrics": {},
                "compression_noise": None} | counts
    chosen = configs.iloc[0]
    status = "pass" if chosen["passes"] == True else "none passes"  # noqa: E712
    point = ctx.points[chosen["label"]]
    full = trials[trials["full_fidelity"] == True]  # noqa: E712
    rows = full[full["label"] == chosen["label"]].drop_duplicates("task", keep="last")
    metrics = {r["task"]: {c: r[c] for c in METRIC_COLUMNS if c != "task"} for _, r in rows.iterrows()}
    args = [*overrides, *point.overrides]
    return {"status": status, "passes": bool(chosen["passes"]), "label": chosen["label"], "overrides": args,
            "command": f"make eval ARGS={shlex.quote(' '.join(args))}", "method": point.method,
            "params": dict(point.params), "avg_bits": float(chosen["avg_bits"]), "model_gb": float(chosen["model_gb"]),
            "violation": float(chosen["violation"]), "metrics": metrics, "run": chosen["run"],
            "gate_verdict": chosen.get("gate_verdict"), "passes_unadjusted": bool(chosen.get("passes_unadjusted", False)),
            "compression_noise": noise.versus_runner_up(configs, full),
            } | counts


def write(ctx: Context, study, cfg, budget, overrides: list[str]) -> dict:
    """All outputs of the search folder; returns the recommendation."""
    trials = trials_table(ctx, study)
    trials.to_csv(ctx.search_dir / "trials.csv", index=False)
    configs = configurations(trials) if len(trials) else trials
    m = compared(trials)
    full = trials[trials["full_fidelity"] == True] if len(trials) else trials  # noqa: E712
    if len(configs):
        configs = noise.annotate(ranked(confirm(ctx, cfg, configs, m)), full)
    configs.to_csv(ctx.search_dir / "configurations.csv", index=False)
    by_cost = configs.sort_values(["cost", "worst_flips"], kind="stable").reset_index(drop=True) if len(configs) else configs
    front = pareto(by_cost) if len(configs) else configs
    front.to_csv(ctx.search_dir / "pareto.csv", index=False)
    rec = recommend(ctx, trials, configs, overrides, cfg.search.cost, m)
    rec["seconds"] = round(sum(sum(t.user_attrs.get("seconds", {}).values()) for t in study.get_trials(deepcopy=False)), 1)
    (ctx.search_dir / "recommendation.json").write_text(json.dumps(rec, indent=2, default=float) + "\n")
    report.write(ctx, cfg, budget, trials, configs, front, rec)
    return rec
