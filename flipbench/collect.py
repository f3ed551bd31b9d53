"""``flipbench collect``: evaluate one side (or one shard of it) on any machine and engine, into an artifact.

    flipbench collect side=baseline  output.artifact=art/base  [shard=I/N] [model=hf model.path=...] [engine=vllm]
    flipbench collect side=compressed output.artifact=art/rtn4 compression=rtn compression.bits=4 \\
        output.baseline_artifact=art/base          # optional: token KL against the baseline's answers
    flipbench compare art/base art/rtn4            # CPU only, no model

The same overrides as a run. Every check runs before the artifact folder is made; a complete artifact is not
collected again unless ``output.redo=true``. See :mod:`flipbench.artifact` for the folder's contents.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from flipbench import answerkl, artifact, cache, engines, models, rundir, shards, trajectory
from flipbench import side  # the stages of one side, as the one-process run uses them
from flipbench.config import ConfigError, FlipbenchConfig, NoneConfig, parse_shard, setting, to_typed
from flipbench.modelsize import baseline_size

log = logging.getLogger("flipbench")


def default_folder(cfg: FlipbenchConfig) -> Path:
    tag = cfg.model.name if cfg.side == "baseline" else rundir.run_tag(cfg.model.name, cfg.compression.method,
                                                                           setting(cfg.compression, "bits"))
    return Path(cfg.output.root) / "artifacts" / f"{tag}-{cfg.side}"


def side_config(cfg: FlipbenchConfig) -> FlipbenchConfig:
    """The baseline side compresses nothing, whatever compression is selected."""
    if cfg.side == "baseline":
        return replace(cfg, compression=NoneConfig())
    return cfg


def identity(cfg: FlipbenchConfig, task_objs: dict, tokenizer) -> dict:
    """The manifest fields every shard of a side shares and compare checks (see artifact.SIDE_IDENTITY)."""
    from importlib.metadata import version

    from flipbench.reuse import tokenizer_fingerprint

    suite = asdict(cfg.suite)
    suite["tasks"] = list(suite["tasks"])
    return {
        "side": cfg.side, "model": {"name": cfg.model.name, "path": cfg.model.path, "revision": cfg.model.revision,
                                    "gguf_file": cfg.model.gguf_file, "dtype": cfg.model.dtype},
        "engine": engines.identity(cfg), "tasks": cache.task_fingerprint(task_objs),
        "tokenizer": tokenizer_fingerprint(tokenizer), "suite": suite, "lm_eval": version("lm_eval"),
        "compression_settings": asdict(cfg.compression) if cfg.side == "compressed" else None,
    }


def check_baseline_artifact(cfg: FlipbenchConfig) -> artifact.Side | None:
    """output.baseline_artifact, read before any weight: its answers are what token KL scores."""
    if cfg.side != "compressed" or not cfg.output.baseline_artifact:
        return None
    base = artifact.load_side([cfg.output.baseline_artifact], "output.baseline_artifact")
    if base.references is None and (base.samples["output_type"] == "generate_until").any():
        raise ConfigError(f"output.baseline_artifact {base.label} holds no token-KL reference (collected with "
                          "eval.token_kl=false?); collect the baseline with eval.token_kl=true or leave it out")
    return base


def collect(cfg) -> Path:
    """Evaluate one side (or shard) and write its artifact; returns the artifact folder."""
    cfg = to_typed(cfg)
    if cfg.side is None:
        raise ConfigError("flipbench collect needs side=baseline or side=compressed")
    cfg = side_config(cfg)
    shard = parse_shard(cfg.shard)
    plan = side.preflight(cfg)
    folder = artifact.shard_folder(Path(cfg.output.artifact) if cfg.output.artifact else default_folder(cfg), shard)
    if artifact.is_complete(folder) and not cfg.output.redo:
        log.info("%s is already complete; skipping it (output.redo=true collects it again)", folder)
        return folder
    baseline = check_baseline_artifact(cfg)
    task_objs, tokenizer, calibration = side.prepare(cfg, plan)
    limits = side.limits(task_objs, plan, cfg)
    ids = shards.assign(task_objs, limits, cfg.shard, cfg.suite.subject_field)
    chunks, order = _sequential_prefix(cfg, plan, task_objs, ids) if cfg.gate.sequential else (None, None)
    if chunks is not None:  # the first gate.sequential_docs docs of each task's seeded order (this shard's of them)
        ids = {}
        for chunk in chunks:
            for leaf, v in chunk.items():
                ids.setdefault(leaf, []).extend(v)
        ids = {leaf: sorted(v) for leaf, v in ids.items()}
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (artifact.SAMPLES, artifact.TOKEN_KL, f"{artifact.REFERENCE_KEY}.kl.pt",
                  f"{artifact.REFERENCE_KEY}.kl.json", artifact.ORDER):
        (folder / stale).unlink(missing_ok=True)  # a redo never mixes with an earlier collect's files
    if order is not None:
        artifact.write_order(folder, order)
    device = models.pick_device(cfg.model.device)
    manifest = rundir.Manifest(folder, cfg.eval.seed, str(device), name=artifact.MANIFEST)
    manifest.update(**artifact_fields(cfg, plan, task_objs, tokenizer, limits, ids), host=socket.gethostname())
    log_file = rundir.attach_log(folder / "collect.log")
    log.info("artifact: %s (side %s%s)", folder, cfg.side, f", shard {cfg.shard}" if shard else "")
    try:
        _collect(cfg, plan, (task_objs, tokenizer, calibration), ids, folder, manifest, baseline, chunks)
    except BaseException as err:
        manifest.fail(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        raise
    finally:
        rundir.detach_log(log_file)
    return folder


def artifact_fields(cfg: FlipbenchConfig, plan, task_objs: dict, tokenizer, limits: dict, ids: dict | None) -> dict:
    """The artifact manifest's fields (besides status and stage times): identity, shard, docs, eval settings,
    config. The one-process run writes them with its cached baseline too."""
    shard = parse_shard(cfg.shard)
    docs = {leaf: len(ids[leaf]) if ids is not None else _evaluated(task_objs[leaf], limits[leaf])
            for leaf in task_objs if ids is None or leaf in ids}
    return dict(format=artifact.FORMAT, **identity(cfg, task_objs, tokenizer), shard=list(shard) if shard else None,
                docs=docs, docs_total={leaf: _evaluated(task_objs[leaf], limits[leaf]) for leaf in task_objs},
                eval={"batch_size": cfg.eval.batch_size, "token_kl": cfg.eval.token_kl,
                      "token_kl_topk": cfg.eval.token_kl_topk},
                config=_plain_config(cfg), data_notes=plan.notes, gen_budgets=trajectory.budgets(task_objs, plan))


def _evaluated(task, limit: int | None) -> int:
    n = len(task.eval_docs)
    return min(limit or n, n)


def _plain_config(cfg: FlipbenchConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg))


def _sequential_prefix(cfg: FlipbenchConfig, plan, task_objs: dict, ids: dict | None) -> tuple[list, dict]:
    """(the chunks this collect evaluates, the order record compare reads): every task's docs in the sequential
    gate's seeded order, up to gate.sequential_docs (whole looks), this shard's docs of each chunk."""
    from flipbench import sequential

    orders = sequential.doc_orders(task_objs, plan, cfg)
    states, _ = sequential.states_from(orders, cfg.gate, cfg.gate.sequential_docs)
    record = {"seed": cfg.eval.seed, "stratify": cfg.gate.stratify, "chunk": cfg.gate.chunk,
              "docs": cfg.gate.sequential_docs, "orders": orders}
    return sequential.prefix_chunks(states, ids), record


def _evaluate_chunks(cfg: FlipbenchConfig, evaluate, chunks: list, key: dict, leaves: set) -> pd.DataFrame:
    """The side's rows of ``chunks``: those a killed or shorter collect of this side already evaluated are read
    from the chunk store, the rest evaluated in one engine call and stored chunk by chunk."""
    from flipbench import sequential

    store = sequential.ChunkStore(Path(cfg.output.root) / "cache" / "chunks", key)
    frames = {k: store.load(chunk) for k, chunk in enumerate(chunks)}
    missing = [k for k, frame in frames.items() if frame is None]
    if missing:
        log.info("sequential collect: %d of %d chunks to evaluate (%d found in the chunk store)", len(missing),
                 len(chunks), len(chunks) - len(missing))
        union: dict[str, set] = {}
        for k in missing:
            for leaf, v in chunks[k].items():
                union.setdefault(leaf, set()).update(v)
        fresh = evaluate({leaf: sorted(v) for leaf, v in union.items()})
        for k in missing:
            frames[k] = sequential.rows_of(fresh, chunks[k], leaves)
            store.save(chunks[k], frames[k])
    return artifact.order_rows(pd.concat([frames[k] for k in range(len(chunks))], ignore_index=True))


def _collect(cfg: FlipbenchConfig, plan, prepared, ids, folder: Path, manifest, baseline, chunks=None) -> None:
    task_objs, tokenizer, calibration = prepared
    hf = cfg.engine.name == "hf"
    method = cfg.compression.method
    # HF weights only where this process evaluates or compresses them; another engine gives token KL its log-probs
    needs_model = hf or method not in ("none", "checkpoint")
    model, path = None, side._engine_path(cfg, cfg.side)
    if needs_model:
        with manifest.stage("load_model", log):
            model, tokenizer = models.load_model(cfg.model, tokenizer=tokenizer)
            if cfg.side == "baseline":
                manifest.update(fingerprint=models.fingerprint(model))
    if cfg.side == "baseline":  # its size, for the compared run's "GB saved"
        manifest.update(size=baseline_size(model, cfg.model))
    details = {"method": "none"}
    if cfg.side == "compressed":
        with manifest.stage("compress", log):
            grids = {} if cfg.engine.serve_format == "packed" and not hf else None
            model, tokenizer, details = side.compress(model, tokenizer, calibration, cfg, grids)
            if not hf and method not in ("none", "checkpoint"):
                path = str(engines.save_served(model, tokenizer, folder / "served", cfg, grids))
        manifest.update(compression=details)
    elif model is not None:
        details = {"method": "none", "avg_bits": side._native_bits(model)}
        manifest.update(compression=details)
    work = _work(model, tokenizer, task_objs, plan, cfg, ids)
    engine_kl = {}
    then = None if hf or not cfg.eval.token_kl else (
        lambda lm, frame: engine_kl.update(_engine_token_kl(lm, frame, tokenizer, cfg, baseline)))
    with manifest.stage(f"evaluate_{cfg.side}", log):
        if chunks is not None and then is None:  # engine token KL needs every row while the engine is up
            key = {"side": identity(cfg, task_objs, tokenizer), "batch_size": cfg.eval.batch_size,
                   "weights": models.fingerprint(model) if model is not None else None}
            frame = _evaluate_chunks(cfg, lambda chunk_ids: side.evaluate_side(
                model, tokenizer, task_objs, plan, cfg, label=cfg.side, work=work, path=path, shard_ids=chunk_ids),
                chunks, key, set(task_objs))
        else:
            frame = side.evaluate_side(model, tokenizer, task_objs, plan, cfg, label=cfg.side, work=work, path=path,
                                       shard_ids=ids, then=then)
    if "reference" in engine_kl:  # the baseline's top-k through its engine
        k = engines.reference_topk(cfg)
        cache.ArtifactFolder(folder).store_reference(artifact.REFERENCE_KEY, engine_kl["reference"], topk=k)
        manifest.update(eval={**manifest.data["eval"], "token_kl_topk": k, "token_kl_engine": cfg.engine.name})
    if "keyed" in engine_kl:
        engine_kl["keyed"].to_parquet(folder / artifact.TOKEN_KL, index=False)
        manifest.update(baseline_artifact={"folders": [str(f) for f in baseline.folders],
                                           "fingerprint": baseline.manifest.get("fingerprint")},
                        token_kl_scoring_topk=engines.scoring_topk(cfg))
    if cfg.side == "baseline" and cfg.eval.token_kl and hf:
        with manifest.stage("token_kl_reference", log):
            store = cache.ArtifactFolder(folder)
            reference = answerkl.kl_reference(frame, model, tokenizer, replace(cfg, eval=replace(cfg.eval, cache=False)),
                                              store, artifact.REFERENCE_KEY)
            if reference is not None:
                store.store_reference(artifact.REFERENCE_KEY, reference, topk=cfg.eval.token_kl_topk)
    if baseline is not None and cfg.eval.token_kl and hf:
        with manifest.stage("token_kl", log):
            rows = _baseline_rows(baseline, frame)
            if len(rows):
                keyed = answerkl.token_kl_rows(rows, "response", model, tokenizer, cfg, baseline.references, None)
                keyed.to_parquet(folder / artifact.TOKEN_KL, index=False)
                manifest.update(baseline_artifact={"folders": [str(f) for f in baseline.folders],
                                                   "fingerprint": baseline.manifest.get("fingerprint")})
    frame.to_parquet(folder / artifact.SAMPLES, index=False)
    manifest.complete(finished_host=socket.gethostname(), finished_at=datetime.now(timezone.utc).isoformat())
    log.info("collect complete: %s", folder)


def _work(model, tokenizer, task_objs, plan, cfg: FlipbenchConfig, ids):
    """The side's work line and progress bar; a shard's share of it."""
    from flipbench import console

    if model is None:  # an engine that loads its own copy: docs and requests, no timed probe
        limits = side.limits(task_objs, plan, cfg)
        docs = sum(len(v) for v in ids.values()) if ids is not None else sum(
            _evaluated(task_objs[leaf], limits[leaf]) for leaf in task_objs)
        return console.Work(docs=docs, requests=0, tokens=0, seconds=0.0)
    work = side.estimate_work(model, tokenizer, task_objs, plan, cfg)
    if ids is None or not work.docs:
        return work
    share = sum(len(v) for v in ids.values()) / work.docs
    return console.Work(docs=sum(len(v) for v in ids.values()), requests=round(work.requests * share),
                        tokens=round(work.tokens * share), seconds=work.seconds * share)


def _generates(task_objs: dict) -> bool:
    return any(task.get_config("output_type") == "generate_until" for task in task_objs.values())


def _engine_token_kl(lm, frame: pd.DataFrame, tokenizer, cfg: FlipbenchConfig, baseline) -> dict:
    """Token KL through the side's engine while it is up: the baseline's top-k reference ({"reference": ...}), or the
    compressed side's statistics on the baseline artifact's answers ({"keyed": frame})."""
    if cfg.side == "baseline":
        rows = answerkl._kl_rows(frame)
        if rows.empty:
            return {}
        from flipbench import tokenkl

        prompts, answers, k = rows["prompt"].tolist(), rows["response"].tolist(), engines.reference_topk(cfg)
        fits = tokenkl.reference_bytes(tokenizer, prompts, answers, len(tokenizer), k, scopes=tokenkl.SCOPES) \
            <= cfg.eval.token_kl_reference_mb * 2**20  # the prompt's part only where it fits the budget
        refs = engines.references(lm, tokenizer, prompts, answers, k,
                                  tokenkl.SCOPES if cfg.eval.prefill_kl and fits else ("answer",))
        keys = answerkl._row_keys(rows, "response")
        return {"reference": {**dict(zip(keys, refs["answer"])),
                              **dict(zip(answerkl._prefill_keys(keys), refs.get("prefill", [])))}}
    if baseline is None:
        return {}
    rows = _baseline_rows(baseline, frame)
    if rows.empty:
        return {}
    keys = answerkl._row_keys(rows, "response")
    if baseline.references is None or not all(k in baseline.references for k in keys):
        raise ConfigError("output.baseline_artifact: its token-KL reference does not cover this side's generative docs; "
                          "collect the baseline with eval.token_kl=true")
    prompt_keys = answerkl._prefill_keys(keys)
    prefill = [baseline.references[k] for k in prompt_keys] if cfg.eval.prefill_kl and all(
        k in baseline.references for k in prompt_keys) else None
    stats = engines.token_kl([baseline.references[k] for k in keys], lm, tokenizer, rows["prompt"].tolist(),
                             rows["response"].tolist(), topk=engines.scoring_topk(cfg), prefill=prefill)
    stats.index = rows.index
    return {"keyed": pd.concat([rows[["task", "group", "doc_id"]], stats], axis=1).reset_index(drop=True)}


def _baseline_rows(baseline: artifact.Side, frame: pd.DataFrame) -> pd.DataFrame:
    """The baseline's generative rows for the docs this side evaluated (one per doc), for token KL."""
    base = answerkl._kl_rows(baseline.samples)
    mine = answerkl._kl_rows(frame)[["task", "group", "doc_id", "prompt_hash"]]
    rows = base.merge(mine, on=["task", "group", "doc_id"], how="inner", suffixes=("", "_mine"))
    bad = rows[rows["prompt_hash"] != rows["prompt_hash_mine"]]
    if len(bad):
        raise ConfigError(f"output.baseline_artifact: {len(bad)} prompts differ from this side's (e.g. "
                          f"{bad.iloc[0]['task']} doc {bad.iloc[0]['doc_id']}); collect both sides with the same suite")
    return rows.drop(columns="prompt_hash_mine").reset_index(drop=True)
