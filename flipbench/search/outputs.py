"""The search's tables: trials.csv, pareto.csv and recommendation.json, rebuilt from the study and the trial
runs on disk (so a resumed search writes them whole). Plot and report: :mod:`flipbench.search.report`.

trials.csv has one row per trial × rung × task (a trial skipped before any evaluation has one row, no task);
``fidelity`` is the docs per task the row was scored on (the suite's limit at that rung; ``n`` is what each
task actually had). pareto.csv has one row per configuration that no other full-fidelity configuration beats
on both cost and worst-task flips.
"""

from __future__ import annotations

import json
import shlex

from dataclasses import replace

import pandas as pd

from flipbench.gate import evaluate_gate, worst_excess
from flipbench.search import report
from flipbench.search.study import Context, headline, judge

FAMILY_ERROR = 0.05  # the chance, over the whole search, that the recommendation passes only by luck (adjusted bounds)

METRIC_COLUMNS = ["task", "metric", "n", "acc_base", "acc_comp", "delta_acc", "delta_acc_ci_low", "delta_acc_ci_high",
                  "flips", "flips_ci_low", "flips_ci_high", "lost", "gained", "kl_mean", "kl_mean_ci_low",
                  "kl_mean_ci_high"]


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


def trials_table(ctx: Context, study) -> pd.DataFrame:
    param_keys = list(dict.fromkeys(k for p in ctx.points.values() for k, _ in p.params))
    rows = []
    for trial in study.get_trials(deepcopy=False):
        head = _trial_head(trial, ctx, param_keys)
        runs = trial.user_attrs.get("runs", {})
        if not runs:
            rows.append(head | {"fidelity": 0, "full_fidelity": False})
            continue
        for docs, rel in runs.items():
            run_dir = ctx.search_dir / rel
            if not (run_dir / "summary.csv").exists():
                continue
            tasks = headline(run_dir)
            full = int(docs) == ctx.rungs[-1]
            passes, violation = judge(tasks, ctx.gate, ctx.upper(full))
            for _, task in tasks.iterrows():
                rows.append(head | {"fidelity": int(docs), "full_fidelity": full} | task[METRIC_COLUMNS].to_dict()
                            | {"passes": passes, "violation": violation,
                               "seconds": trial.user_attrs.get("seconds", {}).get(docs), "run": rel})
    return pd.DataFrame(rows)


def configurations(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration scored at full fidelity: its cost, worst-task flips, verdict."""
    full = trials[trials["full_fidelity"] == True].copy()  # noqa: E712 (the column holds NaN for skipped rows)
    if full.empty:
        return full
    full = full.drop_duplicates(["label", "task"], keep="last")
    worst = full.sort_values("flips", ascending=False, kind="stable").drop_duplicates("label")
    worst = worst.rename(columns={"task": "worst_task", "flips": "worst_flips"})
    return worst.sort_values(["cost", "worst_flips"], kind="stable").reset_index(drop=True)


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


def recommend(ctx: Context, trials: pd.DataFrame, configs: pd.DataFrame, overrides: list[str], cost_key: str,
              m: int = 0) -> dict:
    """The cheapest configuration that passes every limit at full fidelity (after :func:`confirm`), else the one
    nearest to passing."""
    upper = ctx.upper(final=True)
    counts = {"grid_size": len(ctx.points), "in_budget": sum(c["in_budget"] for c in ctx.costs.values()),
              "judged_on": "upper_ci" if upper else "point",
              "multiplicity": ({"method": "bonferroni", "configurations_compared": m,
                                "confidence": 1 - FAMILY_ERROR / max(m, 1)} if upper else
                               {"method": "none: point estimates have no interval to adjust",
                                "configurations_compared": m}),
              "trials": int(trials["trial"].nunique()) if len(trials) else 0,
              "full_fidelity_evaluations": int(len(configs)),
              "screening_evaluations": int(trials.loc[trials["fidelity"].between(1, ctx.rungs[-1] - 1),
                                                      ["label", "fidelity"]].drop_duplicates().shape[0]),
              "rungs": ctx.rungs, "cost": cost_key}
    if configs.empty:
        return {"status": "none passes", "passes": False, "overrides": None, "avg_bits": None, "metrics": {}} | counts
    passing = configs[configs["passes"] == True]  # noqa: E712
    status = "pass" if len(passing) else "none passes"
    chosen = passing.iloc[0] if len(passing) else configs.sort_values(["violation", "cost"], kind="stable").iloc[0]
    point = ctx.points[chosen["label"]]
    rows = trials[(trials["label"] == chosen["label"]) & (trials["full_fidelity"] == True)]  # noqa: E712
    rows = rows.drop_duplicates("task", keep="last")
    metrics = {r["task"]: {c: r[c] for c in METRIC_COLUMNS if c != "task"} for _, r in rows.iterrows()}
    args = [*overrides, *point.overrides]
    return {"status": status, "passes": bool(chosen["passes"]), "label": chosen["label"], "overrides": args,
            "command": f"make eval ARGS={shlex.quote(' '.join(args))}", "method": point.method,
            "params": dict(point.params), "avg_bits": float(chosen["avg_bits"]), "model_gb": float(chosen["model_gb"]),
            "violation": float(chosen["violation"]), "metrics": metrics, "run": chosen["run"],
            "gate_verdict": chosen.get("gate_verdict"), "passes_unadjusted": bool(chosen.get("passes_unadjusted", False)),
            } | counts


def write(ctx: Context, study, cfg, budget, overrides: list[str]) -> dict:
    """All outputs of the search folder; returns the recommendation."""
    trials = trials_table(ctx, study)
    trials.to_csv(ctx.search_dir / "trials.csv", index=False)
    configs = configurations(trials) if len(trials) else trials
    m = compared(trials)
    if len(configs):
        configs = confirm(ctx, cfg, configs, m)
    front = pareto(configs) if len(configs) else configs
    front.to_csv(ctx.search_dir / "pareto.csv", index=False)
    rec = recommend(ctx, trials, configs, overrides, cfg.search.cost, m)
    rec["seconds"] = round(sum(sum(t.user_attrs.get("seconds", {}).values()) for t in study.get_trials(deepcopy=False)), 1)
    (ctx.search_dir / "recommendation.json").write_text(json.dumps(rec, indent=2, default=float) + "\n")
    report.write(ctx, cfg, budget, trials, configs, front, rec)
    return rec
