"""``flipbench compare BASE COMP [overrides]``: pair two sides' artifacts and write a run folder, with no model.

BASE and COMP are artifact folders written by ``flipbench collect`` (or folders of their shards; several folders for
one side may be joined with commas). The run folder is the one ``make eval`` writes (samples.parquet, summary.csv,
reports, plots, manifest with the gate verdict); the exit code is the gate's. Overrides may set ``gate.*``,
``output.*``, ``eval.bootstrap`` and ``model.name``: everything else was fixed when the sides were collected.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from flipbench import artifact, rundir
from flipbench.config import ConfigError, FlipbenchConfig, check_gate_tasks, check_keys, from_saved, setting, to_typed

log = logging.getLogger("flipbench")

ALLOWED = ("gate.", "output.", "eval.bootstrap", "model.name")


def parse_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(side arguments, overrides): words with '=' are overrides, the others name sides."""
    sides = [a for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    if len(sides) < 2:
        raise ConfigError("flipbench compare needs two sides: flipbench compare BASE_ARTIFACT COMP_ARTIFACT "
                          "[gate.max_flips=0.05 ...]")
    for override in overrides:
        key = override.lstrip("+").split("=", 1)[0]
        if not key.startswith(ALLOWED):
            raise ConfigError(f"{key} cannot change after collect; compare takes gate.*, output.*, eval.bootstrap "
                              "and model.name (collect the sides again to change the rest)")
    return sides, overrides


def run_config(comp: artifact.Side, overrides: list[str]) -> FlipbenchConfig:
    """The compressed side's collect config with compare's overrides (gate, output) over it."""
    stored = OmegaConf.create(comp.manifest.get("config") or {})
    for key in ("side", "shard"):
        stored.pop(key, None)
    given = OmegaConf.from_dotlist([o.lstrip("+") for o in overrides])
    check_keys(given)  # an unknown override named in one line, before the schema merge would raise its own error
    cfg = to_typed(OmegaConf.merge(from_saved(stored), given))  # the run's own normalising
    cfg.output.artifact = cfg.output.baseline_artifact = None
    return cfg


def compare(argv: list[str]) -> Path:
    """Pair the sides named in ``argv`` and write the run folder; returns it."""
    from flipbench import metrics, report, scoring
    from flipbench.pairing import pair
    from flipbench.answerkl import fill_token_kl

    sides, overrides = parse_args(argv)
    if len(sides) > 2:
        raise ConfigError("flipbench compare takes one baseline and one compressed side here; several compressed "
                          "sides go through flipbench.compare_many (the CLI routes them there)")
    base = artifact.load_side(sides[0].split(","), "baseline")
    comp = artifact.load_side(sides[1].split(","), "compressed side")
    cfg = run_config(comp, overrides)
    if cfg.gate.sequential:  # the doc sets may differ: the decision uses the prefix both sides hold
        artifact.check_compatible(base, comp, same_docs=False)
    else:
        artifact.check_compatible(base, comp)
    tasks = sorted(set(base.samples["task"]))
    check_gate_tasks(cfg.gate, tasks)
    base_rows, comp_rows, decided = _sequential(base, comp, cfg) if cfg.gate.sequential else (
        base.samples, comp.samples, None)
    paired = metrics.annotate(pair(base_rows, comp_rows))  # PairingError: exit 2, nothing written yet
    token_kl_note = _token_kl(paired, base, comp, fill_token_kl)
    _trajectory(paired, cfg, comp)
    root = Path(cfg.output.root)
    compression = comp.manifest.get("compression") or {"method": cfg.compression.method}
    run_id = cfg.output.run_id or rundir.new_run_id(cfg.model.name, compression.get("method", "none"),
                                                   setting(cfg.compression, "bits"))
    run_dir = Path(cfg.output.run_dir) if cfg.output.run_dir else root / "runs" / run_id
    if rundir.in_use(run_dir):
        raise ConfigError(f"{run_dir} is being written by a running process; pick another output.run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.save_config(run_dir, cfg)
    manifest = rundir.Manifest(run_dir, cfg.eval.seed, "cpu")
    log_file = rundir.attach_log(run_dir / "run.log")
    try:
        with manifest.stage("metrics", log):
            mismatches = scoring.count_mismatches(paired)
            paired.to_parquet(run_dir / "samples.parquet", index=False)
        manifest.update(compared={"baseline": _describe(base), "compressed": _describe(comp)},
                        compression=compression, n_pred_mismatch=mismatches, token_kl=token_kl_note,
                        baseline_fingerprint=base.manifest.get("fingerprint"), baseline_size=base.manifest.get("size"),
                        data_notes=comp.manifest.get("data_notes") or [])
        if decided is not None:
            manifest.update(sequential=decided)
        with manifest.stage("report", log):
            verdict = report.build(run_dir, cfg)
        manifest.complete(gate=verdict)
    except BaseException as err:
        manifest.fail(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        raise
    finally:
        rundir.detach_log(log_file)
    root.mkdir(parents=True, exist_ok=True)
    rundir.point_latest(root, run_dir)
    return run_dir


def _sequential(base: artifact.Side, comp: artifact.Side, cfg: FlipbenchConfig):
    """The sequential decision over the docs both sides hold: the looks of the order the sides were collected in
    (order.json), up to the longest prefix of it both hold. Returns (baseline rows, compressed rows, info)."""
    from flipbench import sequential

    if base.order is None or comp.order is None:
        raise ConfigError("gate.sequential=true in compare needs both sides collected with gate.sequential=true "
                          "(their order.json); collect them so, or leave gate.sequential out")
    if base.order["orders"] != comp.order["orders"]:
        raise ConfigError("the two sides were collected in different sequential orders (eval.seed, gate.stratify or "
                          "the suite differ); collect both with the same settings")
    orders = comp.order["orders"]
    states, n_checks = sequential.states_from(orders, cfg.gate, chunk=comp.order.get("chunk"))
    leaves = {leaf for spec in orders.values() for leaf, _ in spec["order"]}
    held = [set(zip(sequential.row_leaves(side.samples, leaves), side.samples["doc_id"].astype(int)))
            for side in (base, comp)]
    both = held[0] & held[1]
    for state in states.values():
        shared = next((k for k, unit in enumerate(state.order) if unit not in both), state.available)
        state.budget = shared
        if shared < state.plan[0]:
            raise ConfigError(f"the two sides share {shared} docs of {state.task}'s sequential order, fewer than one "
                              f"look ({state.plan[0]} docs); collect both with a larger gate.sequential_docs")
    fetch = (lambda ids: (sequential.rows_of(base.samples, ids, leaves), sequential.rows_of(comp.samples, ids, leaves)))
    return sequential.run_looks(states, fetch, cfg.gate.alpha, n_checks, cfg.gate.sequential_all)


def _describe(side: artifact.Side) -> dict:
    m = side.manifest
    return {"folders": [str(f) for f in side.folders], "model": m.get("model"), "engine": m.get("engine"),
            "shards": m.get("shards"), "fingerprint": m.get("fingerprint"), "versions": m.get("versions"),
            "host": m.get("host"), "device": m.get("device"), "stage_seconds": m.get("stage_seconds")}


def _token_kl(paired, base: artifact.Side, comp: artifact.Side, fill) -> str:
    """Fill token KL from the compressed side's statistics when they were computed against this baseline."""
    if not (paired["output_type"] == "generate_until").any():
        return "no generative task"
    if comp.manifest.get("token_kl_note"):
        return comp.manifest["token_kl_note"]
    if comp.token_kl is None:
        return ("not available: the compressed side was collected without output.baseline_artifact (token KL needs "
                "the baseline's answers)")
    recorded = (comp.manifest.get("baseline_artifact") or {}).get("fingerprint")
    if recorded != base.manifest.get("fingerprint"):
        return "not available: the compressed side's token KL was computed against another baseline"
    fill(paired, comp.token_kl)
    return "from the compressed side's collect, against this baseline's answers"


def _trajectory(paired, cfg: FlipbenchConfig, comp: artifact.Side) -> None:
    """Per-doc trajectory columns (flipbench.trajectory) with the baseline's tokenizer (no weights read) and the
    generation budgets collect recorded; left NaN, with a warning, when the tokenizer cannot be loaded here."""
    from flipbench import models, trajectory

    if not (paired["output_type"] == "generate_until").any():
        return
    try:
        tokenizer = models.load_tokenizer(cfg.model)
    except ConfigError as err:  # e.g. sides imported from lm-eval logs: string identity only
        log.warning("trajectory columns other than gen_identical left empty: %s", err)
        tokenizer = None
    trajectory.annotate(paired, tokenizer, comp.manifest.get("gen_budgets"))
