"""The one-process run (`make eval`): both sides (:mod:`flipbench.side`) and their comparison, in one process.

check → load baseline → evaluate (cached) → compress → evaluate → pair → metrics → outputs; the same stages
``flipbench collect`` (:mod:`flipbench.collect`) runs per side and ``flipbench compare`` (:mod:`flipbench.compare`)
runs on two artifacts. ``run(cfg)`` is the importable entry the CLI and the tests call. Every check that can reject the input runs
before the first model weight is read; results already written are never removed by a later failure.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from flipbench import cache, engines, models, rundir, scoring
from flipbench.answerkl import fill_token_kl, kl_reference, token_kl_rows, token_kl_stage  # noqa: F401  (re-exported)
from flipbench.modelsize import baseline_size
from flipbench.noise import noise_dtype, noise_floor  # noqa: F401
from flipbench.side import (  # noqa: F401  (re-exported: the stages of one side)
    _engine_path, _native_bits, _needs_calibration, calibration_ids, compress, estimate_work, evaluate_side, limits, prepare,
    preflight,
    quant_config,
)
from flipbench.config import ConfigError, FlipbenchConfig, setting, to_typed
from flipbench.pairing import PairingError, pair

log = logging.getLogger("flipbench")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the stage it stopped and the run folder marked failed (None before a folder existed)."""

    def __init__(self, stage: str, run_dir: Path | None):
        super().__init__(stage)
        self.stage, self.run_dir = stage, run_dir


def baseline_key(cfg: FlipbenchConfig, fingerprint: str, task_objs: dict, device: str, tokenizer=None) -> dict:
    """Everything that can change the baseline's per-sample results: weights, task configs and data, tokenizer
    definition, engine, the libraries that compute them (lm-eval, torch, transformers) and the run settings."""
    from importlib.metadata import version

    from flipbench.reuse import tokenizer_fingerprint

    return {"format": cache.FORMAT, "model": cfg.model.path, "revision": cfg.model.revision, "weights": fingerprint,
            "tasks": cache.task_fingerprint(task_objs), "lm_eval": version("lm_eval"), "torch": version("torch"),
            "transformers": version("transformers"), "engine": engines.identity(cfg),
            "tokenizer": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
            "batch_size": cfg.eval.batch_size,
            "dtype": cfg.model.dtype, "device": device, "limit": cfg.suite.limit, "task_limits": dict(cfg.suite.task_limits), "num_fewshot": dict(cfg.suite.num_fewshot),
            "seed": cfg.eval.seed, "metrics": dict(cfg.suite.metrics), "correct_if": dict(cfg.suite.correct_if),
            "chat": [cfg.suite.chat_template, cfg.suite.system_prompt, cfg.suite.fewshot_as_multiturn, cfg.suite.think_end], "subject_field": cfg.suite.subject_field}


def _by_ctrl_c(err: BaseException) -> bool:
    """A KeyboardInterrupt, or an error a library raised from one (a Ctrl-C during a lazy import comes back
    as, e.g., transformers' RuntimeError "Failed to import ...")."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def run(cfg) -> Path:
    """Run one baseline-vs-compressed comparison; returns the run directory.

    Every check runs before the run folder is made: a refused input leaves nothing behind."""
    cfg = to_typed(cfg)
    root = Path(cfg.output.root)
    try:
        plan = preflight(cfg)
        run_id = cfg.output.run_id or rundir.new_run_id(cfg.model.name, cfg.compression.method, setting(cfg.compression, "bits"))
        run_dir = Path(cfg.output.run_dir) if cfg.output.run_dir else root / "runs" / run_id
        if rundir.is_complete(run_dir) and not cfg.output.redo:
            log.info("%s is already complete; skipping it (output.redo=true runs it again)", run_dir)
            return run_dir
        if rundir.in_use(run_dir):
            raise ConfigError(f"{run_dir} is being written by a running process; wait for it or pick another output.run_dir")
        rundir.mark_stale(run_dir.parent, log)
        prepared = prepare(cfg, plan)
    except BaseException as err:
        if _by_ctrl_c(err):
            raise Interrupted("preflight", None) from None
        raise
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.save_config(run_dir, cfg)
    device = models.pick_device(cfg.model.device)
    manifest = rundir.Manifest(run_dir, cfg.eval.seed, str(device))
    log_file = rundir.attach_log(run_dir / "run.log")
    log.info("run directory: %s", run_dir)
    for note in plan.notes:  # once per run; the report repeats it
        log.warning("note: %s", note)
    manifest.update(data_notes=plan.notes)
    try:
        _stages(cfg, plan, prepared, run_dir, manifest, device)
    except BaseException as err:
        if _by_ctrl_c(err):
            stage = manifest.current or "setup"
            manifest.fail(f"interrupted during {stage}")
            raise Interrupted(stage, run_dir) from None
        manifest.fail(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        raise
    finally:
        rundir.detach_log(log_file)
    rundir.point_latest(root, run_dir)
    return run_dir


def _baseline_fields(cfg: FlipbenchConfig, plan, task_objs: dict, tokenizer, key_parts: dict) -> dict:
    """The cached baseline's artifact manifest, as ``flipbench collect side=baseline`` writes it (task configs as
    fingerprinted before the evaluation, as collect does)."""
    from dataclasses import replace

    from flipbench.collect import artifact_fields, side_config

    base_cfg = side_config(replace(cfg, side="baseline", shard=None, suite=replace(cfg.suite, sample=None)))
    return {**artifact_fields(base_cfg, plan, task_objs, tokenizer, limits(task_objs, plan, cfg), None),
            "tasks": key_parts["tasks"], "fingerprint": key_parts["weights"]}


@contextmanager
def replica_threads(cfg: FlipbenchConfig, replica: int):
    """torch's thread count for one compression replica (compression.replica_threads, cycled); unchanged when unset."""
    threads = setting(cfg.compression, "replica_threads", [])
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads[replica % len(threads)])
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compression_replicas(paired, pristine, base, tokenizer, tasks_plan, cfg: FlipbenchConfig, run_dir: Path, work):
    """Replicas 1..K-1 (replica 0 is ``paired``): each compresses a copy of the baseline with its own calibration
    draw (and threads), is evaluated on the same docs and paired with the baseline. Adds ``flip_count`` to
    ``paired``, writes ``replica_summary.csv`` and returns the manifest's per-replica details."""
    from flipbench import metrics, replicas

    task_objs, plan = tasks_plan
    k = max(setting(cfg.compression, "replicas", 1), 1)
    frames, details = [paired], [_replica_detail(cfg, 0, paired)]
    evaluated = limits(task_objs, plan, cfg)
    for r in range(1, k):
        model = pristine if r == k - 1 else copy.deepcopy(pristine)
        calibration = calibration_ids(cfg, tokenizer, task_objs, evaluated, replica=r)
        with replica_threads(cfg, r):
            model, comp_tok, _ = compress(model, tokenizer, calibration, cfg)
        side = evaluate_side(model, comp_tok, task_objs, plan, cfg, label=f"replica {r}", work=work)
        frames.append(metrics.annotate(pair(base, side)))
        details.append(_replica_detail(cfg, r, frames[-1]))
        del model
    paired["flip_count"] = replicas.flip_count(frames)
    rows = metrics.summarize(paired, metrics_by_task=dict(cfg.suite.metrics), n_resamples=0, seed=cfg.eval.seed,
                             margin_bins=None)
    replicas.summary(frames, rows).to_csv(run_dir / "replica_summary.csv", index=False)
    return details


def _replica_detail(cfg: FlipbenchConfig, replica: int, frame) -> dict:
    from flipbench.side import calibration_seed

    threads = setting(cfg.compression, "replica_threads", [])
    flips = (frame["correct_base"] != frame["correct_comp"]).groupby([frame["task"], frame["filter"]]).mean()
    return {"replica": replica, "calibration_seed": calibration_seed(cfg, replica),
            "threads": threads[replica % len(threads)] if threads else torch.get_num_threads(),
            "flips": {f"{task}/{flt}": round(float(v), 6) for (task, flt), v in flips.items()}}


def _stages(cfg: FlipbenchConfig, plan, prepared, run_dir: Path, manifest, device) -> None:
    from flipbench import metrics, report

    task_objs, tokenizer, calibration = prepared
    root = Path(cfg.output.root)
    with manifest.stage("load_baseline", log):
        model, tokenizer = models.load_model(cfg.model, tokenizer=tokenizer)
        weights = models.fingerprint(model)
        work = estimate_work(model, tokenizer, task_objs, plan, cfg)
    store = cache.BaselineCache(root / "cache")
    size = baseline_size(model, cfg.model)
    key_parts = baseline_key(cfg, weights, task_objs, str(device), tokenizer)
    key = cache.cache_key(key_parts)
    # Only a miss needs the reason: a hit skips the scan of every cached entry's manifest.
    miss = cfg.eval.cache and not store.entry(key).is_dir()
    changed = store.changed_libraries(cfg.model.path, weights, key_parts) if miss else []
    if changed:
        log.info("baseline cache: %s changed since the cached baseline of this model; evaluating it again",
                 ", ".join(changed))
    with store.lock(key):
        # Under the lock, parallel sweep members wait for one baseline evaluation instead of each running it.
        with manifest.stage("evaluate_baseline", log):
            base = store.load(key) if cfg.eval.cache else None
            hit = base is not None
            if not hit:
                base = evaluate_side(model, tokenizer, task_objs, plan, cfg, label="baseline", work=work,
                                     path=_engine_path(cfg, "baseline"))
                store.store(key, base, key_parts, {**_baseline_fields(cfg, plan, task_objs, tokenizer, key_parts),
                                                   "size": size})
        with manifest.stage("token_kl_reference", log):
            reference = kl_reference(base, model, tokenizer, cfg, store, key)
    manifest.update(baseline_cache_hit=hit, baseline_cache_key=key, baseline_fingerprint=weights,
                    baseline_size=size)
    if cfg.eval.noise_floor != "off":
        with manifest.stage("evaluate_noise_floor", log):
            noise, noise_details = noise_floor(model, tokenizer, task_objs, plan, cfg, base, reference)
            noise.to_parquet(run_dir / "noise_samples.parquet", index=False)
        manifest.update(noise_floor=noise_details)
    grids = {} if cfg.output.save_model else None
    n_replicas = setting(cfg.compression, "replicas", 1)
    pristine = copy.deepcopy(model) if n_replicas > 1 else None  # replicas compress copies of the baseline
    with manifest.stage("compress", log), replica_threads(cfg, 0):
        comp_model, comp_tok, details = compress(model, tokenizer, calibration, cfg, grids)
    manifest.update(compression=details)
    path = _engine_path(cfg, "compressed")
    if engines.needs_folder(cfg) and cfg.compression.method not in ("none", "checkpoint"):
        with manifest.stage("save_served", log):  # the engine serves the compressed weights from the run folder
            path = str(engines.save_served(comp_model, comp_tok, run_dir / "served", cfg, grids))
    with manifest.stage("evaluate_compressed", log):
        if cfg.gate.sequential:  # chunk by chunk until the gate is decided; base becomes the docs evaluated
            from flipbench import sequential

            chunks = sequential.ChunkStore(root / "cache" / "chunks", {**key_parts, "weights": models.fingerprint(comp_model),
                                                                         "side": "compressed"})
            base, comp, decided = sequential.run_sequential(comp_model, comp_tok, task_objs, plan, cfg, base=base, path=path,
                                                            store=chunks)
            manifest.update(sequential=decided)
        elif cfg.suite.sample is not None:  # a seeded random share of each task; base becomes those docs
            from flipbench.subsample import sample_ids

            ids, sampled = sample_ids(task_objs, plan, cfg, cfg.suite.sample)
            comp = evaluate_side(comp_model, comp_tok, task_objs, plan, cfg, label="compressed", path=path, shard_ids=ids)
            base = base.merge(comp[["task", "group", "doc_id"]].drop_duplicates(), on=["task", "group", "doc_id"])
            manifest.update(sample=sampled)
        else:
            comp = evaluate_side(comp_model, comp_tok, task_objs, plan, cfg, label="compressed", work=work, path=path)
    with manifest.stage("metrics", log):
        try:
            paired = metrics.annotate(pair(base, comp))
        except PairingError as err:  # both sides ran: keep them, and this is no input error (exit 1, not 2)
            base.to_parquet(run_dir / "baseline_samples.parquet", index=False)
            comp.to_parquet(run_dir / "compressed_samples.parquet", index=False)
            raise RuntimeError(f"the two sides could not be paired after both were evaluated ({err}); both sides' "
                               f"samples are kept in {run_dir}") from None
        mismatches = scoring.count_mismatches(paired)
        if mismatches:
            log.warning("%d predictions recomputed from the log-likelihoods disagree with lm-eval's logged "
                        "correctness; correctness follows lm-eval (n_pred_mismatch in summary.csv)", mismatches)
        manifest.update(n_pred_mismatch=mismatches)
        untouched = cfg.compression.method in ("none", "checkpoint")  # the loaded baseline is still the baseline
        token_kl_stage(paired, comp_model, tokenizer, cfg, reference, model if untouched else pristine)
        from flipbench import trajectory  # where the two generations part: per-doc columns, needs the tokenizer

        trajectory.annotate(paired, tokenizer, trajectory.budgets(task_objs, plan))
        paired.to_parquet(run_dir / "samples.parquet", index=False)
    if n_replicas > 1:
        with manifest.stage("compression_replicas", log):
            manifest.update(replicas=compression_replicas(paired, pristine, base, tokenizer, (task_objs, plan), cfg,
                                                          run_dir, work))
            paired.to_parquet(run_dir / "samples.parquet", index=False)  # with flip_count
        del pristine
    if cfg.output.save_model:  # last use of the compressed model: packing rewrites its linears in place
        with manifest.stage("save_model", log):
            from flipbench.compress.export import save

            manifest.update(saved_model=save(comp_model, comp_tok, grids, quant_config(cfg), run_dir / "model"))
    with manifest.stage("report", log):
        verdict = report.build(run_dir, cfg)
    manifest.complete(gate=verdict)
