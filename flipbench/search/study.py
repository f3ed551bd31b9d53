"""The multi-fidelity search itself: an Optuna study whose trials are flipbench runs.

Each trial draws one configuration of the space and is scored first on a seeded random share of every task's docs
(the lowest rung, ``suite.sample``: the prefix of the sequential gate's doc order) and then on larger shares, up to
every doc. A screening rung is judged on exact finite-population confidence bounds for the full-benchmark values
(:mod:`flipbench.search.screening`): a configuration is dropped only when a limit is violated with confidence
*and* Optuna's successive-halving (or Hyperband) pruner ranks it out, so the pruner chooses which near misses still
go on, never which configurations that may pass stop. A trial is one ``pipeline.run`` per rung, composed from the
same config files and overrides as ``make eval``; the baseline is evaluated once on every doc and then comes from
flipbench's cache.

The value a trial reports orders configurations lexicographically: a configuration that passes every limit
scores its cost (avg bits or GB); one that fails scores ``cap + violation`` (cap: above every cost in the
space), so any passing configuration beats any failing one and, among failing ones, the nearest miss wins. On a
screening rung "passes" means that the bounds leave every limit possible, and the violation is the lower bound's.

The study lives in ``study.db`` (Optuna's RDB storage on SQLite) in the search folder: a killed search
resumes with ``search.id=<id>``, keeps every finished trial, and re-runs the trial that was cut short, whose
already complete rungs are not evaluated again.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from flipbench.config import ConfigError, GateConfig
from flipbench.gate import evaluate_gate, worst_excess
from flipbench.search import screening
from flipbench.search.space import Point

log = logging.getLogger("flipbench.search")

@dataclass
class Context:
    """Everything a trial needs, fixed for the whole search."""

    search_dir: Path
    base_overrides: list[str]  # the user's run overrides (model, suite, gate, ...), without search.*
    compose: object  # overrides -> composed run config (DictConfig)
    gate: GateConfig
    upper_bound: bool
    points: dict[str, Point]  # label -> point
    costs: dict[str, dict]  # label -> {"avg_bits", "model_bytes", "cost", "in_budget"}
    shares: list[float]  # share of every task's docs at each rung, the last (1) is full fidelity
    available: dict[str, int]  # task -> its docs at full fidelity (N of the screening bounds)
    eta: int
    skip_costlier: bool
    noise: dict[str, list[str]] = field(default_factory=dict)  # label -> compression.replicas overrides (full rung)
    cap: float = field(init=False)
    alpha_check: float = field(init=False)  # each screening bound's error share

    def __post_init__(self):
        self.cap = max(c["cost"] for c in self.costs.values()) + 1.0
        self.alpha_check = screening.alpha_per_check(self.gate.alpha, len(self.shares) - 1,
                                                     screening.n_checks(sorted(self.available), self.gate))

    def upper(self, final: bool) -> bool:
        """Judge on the intervals' pessimistic ends? At full fidelity when the search or the gate itself asks for
        it (so a search pass is never looser than ``flipbench``'s own gate); screening rungs judge their bounds."""
        return final and (self.upper_bound or self.gate.on == "upper_ci")

    def rung_name(self, k: int) -> str:
        return f"share{self.shares[k]:g}"


def headline(run_dir: Path) -> pd.DataFrame:
    """Each task's headline whole-task row of a run's summary.csv."""
    summary = pd.read_csv(run_dir / "summary.csv")
    return summary[summary["headline"] & (summary["group"] == "all")].reset_index(drop=True)


def judge(rows: pd.DataFrame, gate: GateConfig, upper: bool) -> tuple[bool, float]:
    """(passes every limit, violation), judged by the release gate itself (:func:`flipbench.gate.evaluate_gate`):
    on the 95% interval's pessimistic end when ``upper``, else on the estimates (the gate's own rule for top-k
    token KL included). violation: the largest excess over a limit, relative to it (0 when every limit holds)."""
    verdict = evaluate_gate(rows, gate, on="upper_ci" if upper else "point")
    return verdict["verdict"] != "FAIL", max(worst_excess(verdict), 0.0)


def run_rung(ctx: Context, point: Point, k: int) -> Path:
    """One flipbench run of point at rung k, through pipeline.run as the CLI runs it: a screening rung evaluates
    its share of every task's docs (suite.sample); full fidelity every doc, with the compression replicas."""
    from flipbench import pipeline

    run_dir = ctx.search_dir / "trials" / point.label / ctx.rung_name(k)
    overrides = [*ctx.base_overrides, *point.overrides, f"output.run_dir={run_dir}", "output.plots=false",
                 "output.save_model=false"]
    final = k == len(ctx.shares) - 1
    overrides += ctx.noise.get(point.label, []) if final else [f"suite.sample={ctx.shares[k]}"]
    return pipeline.run(ctx.compose(overrides))


def rung_verdict(ctx: Context, run_dir: Path, final: bool) -> tuple[bool, float, screening.Screen | None]:
    """(passes, violation, screen) of one rung: full fidelity by the user's rule (:func:`judge`); a screening rung
    by its bounds (passes: no limit violated with confidence)."""
    rows = headline(run_dir)
    if final:
        return (*judge(rows, ctx.gate, ctx.upper(True)), None)
    result = screening.screen(rows, ctx.gate, ctx.available, ctx.alpha_check)
    return result.decision == "promote", max(result.violation, 0.0), result


def incumbent(study) -> float | None:
    """The lowest cost among configurations that passed at full fidelity so far."""
    from optuna.trial import TrialState

    costs = [t.user_attrs["cost"] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if t.user_attrs.get("passes")]
    return min(costs) if costs else None


def suggest(trial, space: dict[str, dict[str, list]]) -> Point:
    """Define-by-run: the method first, then that method's own keys (a conditional space)."""
    method = trial.suggest_categorical("method", list(space))
    params = tuple((key, trial.suggest_categorical(f"{method}.{key}", list(values)))
                   for key, values in (space[method] or {}).items())
    return Point(method, params)


def objective(ctx: Context, space: dict):
    import optuna

    def score(trial) -> float:
        point = suggest(trial, space)
        cost = ctx.costs[point.label]
        trial.set_user_attr("label", point.label)
        for key in ("cost", "avg_bits", "model_bytes"):
            trial.set_user_attr(key, cost[key])
        best = incumbent(trial.study)
        if not cost["in_budget"]:
            trial.set_user_attr("skipped", "over budget")
            raise optuna.TrialPruned()
        if ctx.skip_costlier and best is not None and cost["cost"] >= best:
            trial.set_user_attr("skipped", f"costs at least a passing configuration ({best:.4g})")
            raise optuna.TrialPruned()
        runs, seconds = {}, {}
        for k in range(len(ctx.shares)):
            final = k == len(ctx.shares) - 1
            start = time.perf_counter()
            run_dir = run_rung(ctx, point, k)
            name = ctx.rung_name(k)
            seconds[name] = round(time.perf_counter() - start, 3)
            runs[name] = str(run_dir.relative_to(ctx.search_dir))
            trial.set_user_attr("runs", runs)
            trial.set_user_attr("seconds", seconds)
            passes, violation, _ = rung_verdict(ctx, run_dir, final)
            value = cost["cost"] if passes else ctx.cap + violation
            trial.report(value, step=ctx.eta**k)
            if final:
                trial.set_user_attr("passes", passes)
                return value
            # Dropped only on a confident violation, and only where the pruner ranks the trial out too. The pruner is
            # asked every time: Optuna's successive halving records a trial's rungs when it is asked.
            ranked_out = trial.should_prune()
            if ranked_out and not passes:
                raise optuna.TrialPruned()
        raise AssertionError("unreachable: the last rung returns")

    return score


def make_study(search_dir: Path, seed: int, sampler: str, pruner: str, eta: int, n_rungs: int):
    """Create or load the study in search_dir/study.db; a trial left RUNNING by a killed search is failed
    and queued again with the same parameters."""
    import optuna
    from optuna.trial import TrialState

    samplers = {"brute_force": lambda: optuna.samplers.BruteForceSampler(seed=seed),
                "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True),
                "random": lambda: optuna.samplers.RandomSampler(seed=seed)}
    pruners = {"successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(
                   min_resource=1, reduction_factor=eta, min_early_stopping_rate=0),
               "hyperband": lambda: optuna.pruners.HyperbandPruner(
                   min_resource=1, max_resource=eta ** (n_rungs - 1), reduction_factor=eta),
               "none": optuna.pruners.NopPruner}
    storage = f"sqlite:///{search_dir / 'study.db'}"
    # BruteForceSampler is still marked experimental (since Optuna 3.1); the search pins Optuna 5.0.x.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(study_name="search", storage=storage, direction="minimize", load_if_exists=True,
                                sampler=samplers[sampler](), pruner=pruners[pruner]())
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.info("trial %d was cut short by a stop; running it again", trial.number)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return study


def claim(search_dir: Path) -> Path:
    """One process per search: a pid file, refused while the process that wrote it is alive."""
    pid_file = search_dir / "search.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
            if pid != os.getpid():
                raise ConfigError(f"search {search_dir.name} is already running (pid {pid}); wait for it or stop it")
        except (ValueError, ProcessLookupError):
            pass  # a stale file from a killed search
    pid_file.write_text(str(os.getpid()))
    return pid_file


def optimize(ctx: Context, space: dict, seed: int, sampler: str, pruner: str, n_trials: int):
    """Run trials until n_trials exist in the study (or the brute-force sampler has seen every point)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = make_study(ctx.search_dir, seed, sampler, pruner, ctx.eta, len(ctx.shares))
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    remaining = n_trials - done
    if remaining > 0:
        study.optimize(objective(ctx, space), n_trials=remaining, gc_after_trial=False)
    return study
