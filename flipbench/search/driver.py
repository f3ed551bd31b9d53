"""``run(overrides)``: check the search's inputs, run (or resume) the study, write its outputs.

Every check that can reject the input (unknown method or key in the space, a value the run config refuses, a
budget without a unit, a budget no configuration can meet, unknown tasks or model) runs before any model
weight is read and before the search folder is created.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from flipbench.config import ConfigError
from flipbench.search import outputs, settings, space, study

log = logging.getLogger("flipbench.search")
CONF_DIR = str(Path(__file__).resolve().parent.parent.parent / "conf")
SEARCH_ONLY = ("search.", "search_space", "hydra.")


NOISE_KEYS = ("compression.replicas", "compression.replica_threads")  # shared by every trial that draws calibration


def run_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(the user's overrides that shape every trial's run: model, suite, calibration, eval, gate, output;
    the compression-noise overrides, compression.replicas and .replica_threads, for the full-fidelity rungs)."""
    kept, noise = [], []
    for item in overrides:
        key = item.lstrip("+~")
        if key.startswith(SEARCH_ONLY):
            continue
        if key.startswith(NOISE_KEYS):
            noise.append(item)
            continue
        if key.startswith("compression"):
            raise ConfigError(f"{item!r}: the search chooses the compression; list the choices in search.space instead")
        if key.startswith("suite.sample"):
            raise ConfigError(f"{item!r}: the search samples the docs of its screening rungs itself (search.min_fraction)")
        kept.append(item)
    return kept, noise


def costs_of(points: list[space.Point], shapes: space.Shapes, budget: settings.Budget, cost_key: str, defaults):
    costs = {}
    for point in points:
        bits = space.avg_bits(point, shapes, defaults)
        size = space.model_bytes(bits, shapes)
        in_budget = (budget.max_avg_bits is None or bits <= budget.max_avg_bits + 1e-9) and (
            budget.max_model_bytes is None or size <= budget.max_model_bytes)
        costs[point.label] = {"avg_bits": bits, "model_bytes": size, "in_budget": in_budget,
                              "cost": bits if cost_key == "avg_bits" else size / 1e9}
    if not any(c["in_budget"] for c in costs.values()):
        cheapest = min(costs, key=lambda label: costs[label]["cost"])
        c = costs[cheapest]
        raise ConfigError(f"no configuration in search.space fits the budget (max_avg_bits={budget.max_avg_bits}, "
                          f"max_model_bytes={budget.max_model_bytes}); the cheapest, {cheapest}, needs "
                          f"{c['avg_bits']:.3f} bits and {c['model_bytes']} bytes: raise the budget or add cheaper settings")
    return costs


def method_defaults(compose, points: list[space.Point]) -> dict:
    """Each method's config-group defaults, and every point composed and validated as its trial will be."""
    from flipbench.config import to_typed

    defaults = {}
    for point in points:
        typed = to_typed(compose(point.overrides))
        defaults.setdefault(point.method, {key: getattr(typed.compression, key, None)  # the method's own keys
                                           for key in ("bits", "group_size", "keep_fraction", "sym")})
    return defaults


def noise_overrides(compose, points: list[space.Point], noise: list[str]) -> dict[str, list[str]]:
    """Label -> the compression-noise overrides of its full-fidelity run: every point whose method draws calibration
    (data-free ones, RTN, are identical by construction and run once), each composed and validated with them."""
    from flipbench.config import draws_calibration, to_typed

    if not noise:
        return {}
    out = {}
    for point in points:
        if draws_calibration(to_typed(compose(point.overrides)).compression):
            to_typed(compose([*point.overrides, *noise]))
            out[point.label] = list(noise)
    return out


def available_docs(run_cfg) -> dict[str, int]:
    """Task -> its docs at full fidelity, counted as the screening sample and the sequential gate count them."""
    from flipbench import evaluate, pipeline, subsample

    plan = pipeline.preflight(run_cfg)
    return subsample.available(evaluate.load_tasks(plan), plan, run_cfg)


def search_folder(cfg, root: Path) -> tuple[Path, bool]:
    """(folder, resuming). A given id that exists resumes; its saved search settings must match."""
    search_id = cfg.search.id or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{cfg.model.name}"
    folder = root / "searches" / search_id
    saved = folder / "search.yaml"
    if not saved.exists():
        return folder, False
    before = OmegaConf.to_container(OmegaConf.load(saved))
    now = OmegaConf.to_container(OmegaConf.structured(cfg))
    for node in (before, now):
        node["search"].pop("n_trials", None)
        node["search"].pop("id", None)
        node.pop("compression", None)  # the search chooses it (a search saved before per-method configs holds all keys)
    if before != now:
        raise ConfigError(f"search.id={search_id} was started with other settings; resume it with the same "
                          "overrides, or start a new search (another search.id)")
    return folder, True


def run(overrides: list[str]) -> Path:
    """Run or resume the search the overrides describe; returns its folder."""
    from hydra import compose, initialize_config_dir

    import flipbench.cli  # noqa: F401  (registers the run schema and the config resolvers)
    from flipbench.config import to_typed

    settings.register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        base, noise = run_overrides(overrides)
        cfg, budget = settings.to_typed(compose("search", [o for o in overrides if o not in noise]))

        def compose_run(extra: list[str]):
            return compose("config", [*base, *extra])

        space.check_space(cfg.search.space)
        points = space.grid(cfg.search.space)
        defaults = method_defaults(compose_run, points)
        replicas = noise_overrides(compose_run, points, noise)
        shapes = space.model_shapes(cfg.model)
        costs = costs_of(points, shapes, budget, cfg.search.cost, defaults)
        run_cfg = to_typed(compose_run(points[0].overrides))
        available = available_docs(run_cfg)
        folder, resuming = search_folder(cfg, Path(cfg.output.root))
        folder.mkdir(parents=True, exist_ok=True)
        if not resuming:
            (folder / "search.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        pid_file = study.claim(folder)
        ctx = study.Context(folder, base, compose_run, cfg.gate, cfg.search.upper_bound, {p.label: p for p in points},
                            costs, space.fidelities(max(available.values()), cfg.search.min_fraction,
                                                    cfg.search.reduction_factor),
                            available, cfg.search.reduction_factor, cfg.search.skip_costlier, replicas)
        log.info("search %s: %d configurations, %d in budget, rungs %s of every task's docs (%s)%s", folder.name,
                 len(points), sum(c["in_budget"] for c in costs.values()), ctx.shares,
                 ", ".join(f"{t} {n}" for t, n in available.items()), " (resuming)" if resuming else "")
        try:
            result = study.optimize(ctx, cfg.search.space, cfg.search.seed, cfg.search.sampler, cfg.search.pruner,
                                    cfg.search.n_trials or len(points))
        finally:
            pid_file.unlink(missing_ok=True)
        rec = outputs.write(ctx, result, cfg, budget, [o for o in base if not o.lstrip("+~").startswith("output.")])
        if cfg.output.save_model and rec["passes"]:
            ship(compose_run, ctx.points[rec["label"]], folder, rec)
    return folder


def ship(compose_run, point: space.Point, folder: Path, rec: dict) -> None:
    """output.save_model=true: run the recommendation once more at full fidelity, saving its model."""
    import json

    from flipbench import pipeline

    run_dir = pipeline.run(compose_run([*point.overrides, f"output.run_dir={folder / 'recommended'}",
                                        "output.save_model=true"]))
    rec["saved_model"] = str(run_dir / "model")
    (folder / "recommendation.json").write_text(json.dumps(rec, indent=2, default=float) + "\n")
