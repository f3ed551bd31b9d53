"""The stages, in order: check → load baseline → evaluate → compress → evaluate → pair → metrics → outputs.

``run(cfg)`` is the importable entry the CLI and the tests call. Every check that can reject the input runs
before the first model weight is read; results already written are never removed by a later failure.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from flipbench import cache, console, engines, evaluate, models, rundir, scoring, tasks
from flipbench.config import PRUNE_METHODS, QUANT_METHODS, ConfigError, FlipbenchConfig, check_gate_tasks, to_typed
from flipbench.pairing import PairingError, pair

log = logging.getLogger("flipbench")



class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the stage it stopped and the run folder marked failed (None before a folder existed)."""

    def __init__(self, stage: str, run_dir: Path | None):
        super().__init__(stage)
        self.stage, self.run_dir = stage, run_dir


def preflight(cfg: FlipbenchConfig) -> tasks.TaskPlan:
    """Everything checkable from the config, config.json and tokenizer files, data files and task YAML; no
    dataset download, no weight. A sweep runs it for every member before the first member starts."""
    from flipbench import preflight as checks

    checks.check_device(cfg.model.device)
    checks.check_output_folder(cfg.output.root)
    if cfg.output.run_dir:
        checks.check_output_folder(cfg.output.run_dir, "output.run_dir")
    checks.check_task_yamls(cfg.suite.include_path)
    engines.check(cfg)
    plan = tasks.resolve(cfg.suite)
    names = sorted(set(plan.reported.values()))
    check_gate_tasks(cfg.gate, names)
    checks.check_generation_budgets(cfg.suite.max_gen_toks, plan)
    m, comp = cfg.model, cfg.compression
    base_config = models.check_model(m.path, m.revision, m.trust_remote_code, gguf_file=m.gguf_file)
    models.check_placement(m, base_config)
    if comp.method == "checkpoint":
        comp_config = models.check_model(comp.path or m.path, None, m.trust_remote_code, what="compression.path",
                                         gguf_file=comp.gguf_file)
        checks.check_same_vocabulary(base_config, comp_config, m.path, comp.path or m.path)
    if cfg.compression.method in QUANT_METHODS + PRUNE_METHODS:
        checks.check_quant_shapes(base_config, quant_config(cfg), cfg.model.trust_remote_code)
    cal, method = cfg.calibration, cfg.compression.method
    if cal.source == "text" and _needs_calibration(cfg) or cal.gradient_source == "text" and method == "tacq":
        checks.check_text_file(cal.path)
    return plan


def prepare(cfg: FlipbenchConfig, plan: tasks.TaskPlan):
    """Reads the datasets and the tokenizer, still no weight: (task objects, tokenizer, calibration ids).

    Checks that the tasks' prompts, choices and generation budgets fit the model's context, and draws the
    calibration data (refusing docs that are also evaluated)."""

    from flipbench import budget

    tokenizer = models.load_tokenizer(cfg.model)
    task_objs = evaluate.load_tasks(plan)
    evaluate.configure(task_objs, plan, dict(cfg.suite.num_fewshot), dict(cfg.suite.max_gen_toks))
    config = models.check_model(cfg.model.path, cfg.model.revision, cfg.model.trust_remote_code,
                                gguf_file=cfg.model.gguf_file)
    limit, samples = evaluate.lm_eval_docs(task_objs, plan, cfg.suite.limit, dict(cfg.suite.task_limits))
    for note in budget.check_context(task_objs, plan.reported, tokenizer, budget.context_length(config, tokenizer),
                                     limit, samples, cfg.eval.seed):
        log.warning(note)
    if cfg.compression.method == "checkpoint":
        from flipbench.preflight import check_tokenizers_agree

        comp = cfg.compression
        comp_tok = models.load_tokenizer(cfg.model, comp.path or cfg.model.path, comp.gguf_file)
        check_tokenizers_agree(tokenizer, comp_tok, comp.path or comp.gguf_file)
    try:
        calibration = calibration_ids(cfg, tokenizer, task_objs, limits(task_objs, plan, cfg))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return task_objs, tokenizer, calibration


def quant_config(cfg: FlipbenchConfig):
    """The compressor's settings: a QuantConfig or a PruneConfig, whichever the method takes."""
    from flipbench.compress import settings_type

    settings = settings_type(cfg.compression.method)
    fields = {k: v for k, v in asdict(cfg.compression).items() if k in settings.__dataclass_fields__}
    if cfg.compression.method in PRUNE_METHODS and cfg.compression.method != "sparsegpt":
        fields["bits"] = None  # only SparseGPT quantizes while it prunes
    return settings(**fields)


def _needs_calibration(cfg: FlipbenchConfig) -> bool:
    from flipbench.compress import needs_data

    return cfg.compression.method in QUANT_METHODS + PRUNE_METHODS and needs_data(quant_config(cfg))


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
            "seed": cfg.eval.seed, "metrics": dict(cfg.suite.metrics), "subject_field": cfg.suite.subject_field}


def estimate_work(model, tokenizer, task_objs, plan, cfg: FlipbenchConfig) -> console.Work:
    """The one line a person reads before evaluating: docs, requests, tokens and minutes per side."""
    work = console.estimate(task_objs, limits(task_objs, plan, cfg), model, tokenizer, cfg.eval.seed)
    log.info(work.line())
    return work


def evaluate_side(model, tokenizer, task_objs, plan, cfg: FlipbenchConfig, batch_size: int | None = None,
                  label: str = "side", work: console.Work | None = None, *, path: str | None = None,
                  shard_ids: dict | None = None) -> pd.DataFrame:
    """One side through lm-eval on the configured engine: ``model`` (hf) or the folder ``path`` (vllm; server
    models are named by the endpoint). ``shard_ids``: leaf -> doc ids of this shard (:func:`flipbench.shards.assign`)."""
    from flipbench import engines

    lm = engines.build_lm(cfg, model=model, tokenizer=tokenizer, path=path, batch_size=batch_size or cfg.eval.batch_size)
    docs, requests = (work.docs, work.requests) if work else (0, 0)
    try:
        with console.side_progress(label, docs, requests):
            raw = evaluate.run_lm_eval(lm, task_objs, plan, limit=cfg.suite.limit, num_fewshot=dict(cfg.suite.num_fewshot),
                                       seed=cfg.eval.seed, task_limits=dict(cfg.suite.task_limits), shard_ids=shard_ids)
    finally:
        engines.release(lm)
    return evaluate.samples_frame(raw, task_objs, plan, dict(cfg.suite.metrics), cfg.suite.subject_field)


def limits(task_objs: dict, plan, cfg: FlipbenchConfig) -> dict:
    return evaluate.doc_limits(task_objs, plan, cfg.suite.limit, dict(cfg.suite.task_limits))


def eval_doc_hashes(task_objs: dict, limits: dict) -> set[str]:
    """lm-eval's doc hashes of every doc that will be evaluated (calibration must not contain them).

    ``limits``: leaf -> docs evaluated (None: all)."""
    from flipbench.compress.calibration import doc_hash

    hashes = set()
    for leaf, task in task_objs.items():
        docs = list(task.eval_docs)
        hashes.update(doc_hash(doc) for doc in docs[: limits.get(leaf) or len(docs)])
    return hashes


def calibration_ids(cfg: FlipbenchConfig, tokenizer, task_objs: dict, evaluated: dict | None = None):
    """(calib, task_calib) token-id tensors for GPTQ Hessians and TACQ gradients; None for data-free methods."""
    from flipbench.compress import calibration as calib

    cal = cfg.calibration
    if not _needs_calibration(cfg):
        return None, None

    def texts(source: str) -> list[str]:
        if source == "text":
            return calib.text_file_calibration_texts(cal.path)
        return calib.task_calibration_texts(task_objs, cal.n_samples, cfg.eval.seed, eval_doc_hashes(
            task_objs, evaluated if evaluated is not None else dict.fromkeys(task_objs, cfg.suite.limit)))

    ids = calib.tokenize_calibration(tokenizer, texts(cal.source), cal.n_samples, cal.seq_len, cfg.eval.seed)
    grad_ids = None
    if cfg.compression.method == "tacq":
        grad_ids = ids if cal.gradient_source == cal.source else calib.tokenize_calibration(
            tokenizer, texts(cal.gradient_source), cal.n_samples, cal.seq_len, cfg.eval.seed)
    return ids, grad_ids


def compress(model, tokenizer, calibration, cfg: FlipbenchConfig, grids: dict | None = None):
    """Returns (compressed model, tokenizer, details for the manifest). Quantization and pruning work in place.

    ``calibration`` is the (calib, task_calib) pair from :func:`calibration_ids`, built before any evaluation;
    ``grids`` (for output.save_model) receives what the quantizer fitted per linear.
    """
    method = cfg.compression.method
    if method == "none":
        return model, tokenizer, {"method": "none", "avg_bits": _native_bits(model)}
    if method == "checkpoint":
        comp, comp_tok = models.load_model(cfg.model, cfg.compression.path or cfg.model.path,
                                             gguf_file=cfg.compression.gguf_file)
        return comp, comp_tok, {"method": "checkpoint", "path": cfg.compression.path, "avg_bits": _native_bits(comp)}
    from flipbench import compress as compressors

    calib, task_calib = calibration
    device = models.pick_device(cfg.compression.device)  # one decoder block at a time goes there
    details = compressors.compress(model, quant_config(cfg), calib=calib, task_calib=task_calib, device=device,
                                   progress=logging.getLogger("flipbench.compress").info, grids=grids)  # run.log only
    return model, tokenizer, details


def _engine_path(cfg: FlipbenchConfig, side: str) -> str | None:
    """The folder an engine that loads from disk serves for ``side`` (None for hf; a compressed side made in this
    process is saved first, see ``save_served``)."""
    if not engines.needs_folder(cfg):
        return None
    if side == "compressed" and cfg.compression.method == "checkpoint":
        return models.resolve_path(cfg.compression.path or cfg.model.path)
    return models.resolve_path(cfg.model.path)


def _native_bits(model) -> float:
    param = next(model.parameters())
    return float(param.element_size() * 8)


def _kl_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct generative (task, group, doc_id): GSM8k logs a row per filter with the same generation."""
    return frame[frame["output_type"] == "generate_until"].drop_duplicates(["task", "group", "doc_id"])


def _row_keys(rows: pd.DataFrame, response: str) -> list[tuple]:
    """(task, group, doc_id, digest of prompt + answer) per row: a stored log-prob row only fits the same text."""
    def digest(prompt: str, answer: str) -> str:
        return hashlib.sha256(f"{prompt}\x00{answer}".encode()).hexdigest()[:16]

    return [(str(t), str(g), int(d), digest(str(p), str(a)))
            for t, g, d, p, a in zip(rows["task"], rows["group"], rows["doc_id"], rows["prompt"], rows[response])]


def kl_reference(base: pd.DataFrame, model, tokenizer, cfg: FlipbenchConfig, store: cache.BaselineCache, key: str):
    """The baseline's answer-token distributions for token KL, computed while ``model`` still is the baseline.

    Returns {row key: tokenkl.Reference} (see :func:`_row_keys`; top-``eval.token_kl_topk`` or full), from the
    cache when it holds them for the same k; None when token KL is off, no task generates, or they would exceed
    ``eval.token_kl_reference_mb`` (the KL stage then uses the baseline model itself, reloading it if
    quantization changed the loaded copy).
    """
    rows = _kl_rows(base)
    if not cfg.eval.token_kl or rows.empty:
        return None
    keys = _row_keys(rows, "response")
    budget, topk = cfg.eval.token_kl_reference_mb * 2**20, cfg.eval.token_kl_topk
    reference = store.load_reference(key, max_bytes=budget, topk=topk) if cfg.eval.cache else None
    if reference is not None and all(k in reference for k in keys):
        return reference
    from flipbench.tokenkl import answer_logprobs

    logprobs = answer_logprobs(model, tokenizer, rows["prompt"].tolist(), rows["response"].tolist(),
                               batch_size=cfg.eval.batch_size, device=models.input_device(model), topk=topk,
                               max_bytes=budget)
    if logprobs is None:
        log.info("token KL: the baseline's reference would exceed eval.token_kl_reference_mb=%d; the baseline "
                 "model is used for the KL pass instead", cfg.eval.token_kl_reference_mb)
        return None
    reference = dict(zip(keys, logprobs))
    if cfg.eval.cache:
        store.store_reference(key, reference, topk=topk)
    return reference


def token_kl_stage(paired: pd.DataFrame, comp_model, tokenizer, cfg: FlipbenchConfig, reference, base_model) -> None:
    """Token-level KL(base‖comp) on the baseline's generated answers, filled into the generative rows.

    The baseline side comes from ``reference`` (:func:`kl_reference`) where it covers every row, else from
    ``base_model`` (the loaded baseline, where compression left it unchanged), else from a fresh load.
    """
    if not cfg.eval.token_kl or not (paired["output_type"] == "generate_until").any():
        return
    fill_token_kl(paired, token_kl_rows(_kl_rows(paired), "response_base", comp_model, tokenizer, cfg, reference,
                                        base_model))


def token_kl_rows(rows: pd.DataFrame, response: str, comp_model, tokenizer, cfg: FlipbenchConfig, reference,
                  base_model) -> pd.DataFrame:
    """Token KL of ``comp_model`` on the baseline's answers (column ``response`` of ``rows``, one row per generative
    doc): (task, group, doc_id, kl, same_top, n_tokens, per-token lists)."""
    from flipbench.tokenkl import token_kl

    keys = _row_keys(rows, response)
    if reference is not None and all(k in reference for k in keys):
        base = [reference[k] for k in keys]
    else:
        base = base_model if base_model is not None else models.load_model(cfg.model)[0]
    stats = token_kl(base, comp_model, tokenizer, rows["prompt"].tolist(), rows[response].tolist(),
                     batch_size=cfg.eval.batch_size, device=models.input_device(comp_model))
    stats.index = rows.index
    return pd.concat([rows[["task", "group", "doc_id"]], stats], axis=1).reset_index(drop=True)


def fill_token_kl(paired: pd.DataFrame, keyed: pd.DataFrame) -> None:
    """Copy per-doc token-KL statistics (:func:`token_kl_rows`) into the generative rows of ``paired`` (every filter
    row of a doc gets its doc's values); MC rows get empty per-token lists."""
    from flipbench.tokenkl import TOKEN_COLUMNS

    gen = paired.index[paired["output_type"] == "generate_until"]
    filled = paired.loc[gen, ["task", "group", "doc_id"]].merge(keyed, on=["task", "group", "doc_id"], how="left")
    for column in ("kl", "same_top", "n_tokens"):
        paired.loc[gen, column] = filled[column].to_numpy()
    for column in TOKEN_COLUMNS:  # per-token lists: empty for MC rows
        cells = pd.Series([[] for _ in range(len(paired))], index=paired.index, dtype=object)
        cells.loc[gen] = [list(v) if isinstance(v, (list, np.ndarray)) else [] for v in filled[column]]
        paired[column] = cells


def noise_dtype(requested: str, model) -> str:
    """The noise floor's other dtype; ``auto`` flips between float32 and bfloat16."""
    if requested != "auto":
        return requested
    return "bfloat16" if next(model.parameters()).dtype == torch.float32 else "float32"


def noise_floor(model, tokenizer, task_objs, plan, cfg: FlipbenchConfig, base: pd.DataFrame, reference):
    """The baseline against itself under ``eval.noise_floor``: (annotated samples with token KL, details).

    ``batch`` re-evaluates the loaded baseline at ``eval.noise_batch_size``; ``dtype`` loads a second copy of the
    baseline in ``eval.noise_dtype`` (it needs the memory of that copy while it runs); ``batch_dtype`` does both.
    """
    from flipbench import metrics

    mode = cfg.eval.noise_floor
    batch = cfg.eval.noise_batch_size if mode in ("batch", "batch_dtype") else cfg.eval.batch_size
    base_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    other, dtype = model, base_dtype
    if mode in ("dtype", "batch_dtype"):
        dtype = noise_dtype(cfg.eval.noise_dtype, model)
        other = models.load_model(replace(cfg.model, dtype=dtype), tokenizer=tokenizer)[0]
    noise = metrics.annotate(pair(base, evaluate_side(other, tokenizer, task_objs, plan, cfg, batch_size=batch)))
    # the KL pass runs at the perturbed batch size too, so a batch perturbation reaches the token KL
    token_kl_stage(noise, other, tokenizer, replace(cfg, eval=replace(cfg.eval, batch_size=batch)), reference, model)
    details = {"mode": mode, "batch_size": batch, "dtype": dtype, "baseline_batch_size": cfg.eval.batch_size,
               "baseline_dtype": base_dtype}
    return noise, details


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
        run_id = cfg.output.run_id or rundir.new_run_id(cfg.model.name, cfg.compression.method, cfg.compression.bits)
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


def _stages(cfg: FlipbenchConfig, plan, prepared, run_dir: Path, manifest, device) -> None:
    from flipbench import metrics, report

    task_objs, tokenizer, calibration = prepared
    root = Path(cfg.output.root)
    with manifest.stage("load_baseline", log):
        model, tokenizer = models.load_model(cfg.model, tokenizer=tokenizer)
        weights = models.fingerprint(model)
        work = estimate_work(model, tokenizer, task_objs, plan, cfg)
    store = cache.BaselineCache(root / "cache")
    key_parts = baseline_key(cfg, weights, task_objs, str(device), tokenizer)
    key = cache.cache_key(key_parts)
    changed = store.changed_libraries(cfg.model.path, weights, key_parts) if cfg.eval.cache else []
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
                store.store(key, base, key_parts)
        with manifest.stage("token_kl_reference", log):
            reference = kl_reference(base, model, tokenizer, cfg, store, key)
    manifest.update(baseline_cache_hit=hit, baseline_cache_key=key, baseline_fingerprint=weights)
    if cfg.eval.noise_floor != "off":
        with manifest.stage("evaluate_noise_floor", log):
            noise, noise_details = noise_floor(model, tokenizer, task_objs, plan, cfg, base, reference)
            noise.to_parquet(run_dir / "noise_samples.parquet", index=False)
        manifest.update(noise_floor=noise_details)
    grids = {} if cfg.output.save_model else None
    with manifest.stage("compress", log):
        comp_model, comp_tok, details = compress(model, tokenizer, calibration, cfg, grids)
    manifest.update(compression=details)
    path = _engine_path(cfg, "compressed")
    if engines.needs_folder(cfg) and cfg.compression.method not in ("none", "checkpoint"):
        with manifest.stage("save_served", log):  # the engine serves the compressed weights from the run folder
            path = str(engines.save_served(comp_model, comp_tok, run_dir / "served", cfg, grids))
    with manifest.stage("evaluate_compressed", log):
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
        token_kl_stage(paired, comp_model, tokenizer, cfg, reference, model if untouched else None)
        paired.to_parquet(run_dir / "samples.parquet", index=False)
    if cfg.output.save_model:  # last use of the compressed model: packing rewrites its linears in place
        with manifest.stage("save_model", log):
            from flipbench.compress.export import save

            manifest.update(saved_model=save(comp_model, comp_tok, grids, quant_config(cfg), run_dir / "model"))
    with manifest.stage("report", log):
        verdict = report.build(run_dir, cfg)
    manifest.complete(gate=verdict)
