"""One side, from the config to its per-sample frame: checks, data, compression and evaluation on an engine.

The one-process run (:mod:`flipbench.pipeline`) and ``flipbench collect`` (:mod:`flipbench.collect`) both go through
these functions, so a side collected on its own is evaluated exactly as in a run.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict

import pandas as pd

from flipbench import console, engines, evaluate, models, tasks
from flipbench.config import PRUNE_METHODS, QUANT_METHODS, ConfigError, FlipbenchConfig, check_gate_tasks

log = logging.getLogger("flipbench")


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
    for task in cfg.suite.task_limits:  # by reported task (synth_arc inside the synth group), or by leaf
        if task not in names and task not in plan.reported:
            raise ConfigError(f"suite.task_limits.{task}: {task} is not a task of this run ({', '.join(names)}); "
                              "name an evaluated task")
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
    from flipbench.preflight import check_headline_metrics

    run = set(plan.reported.values())  # the suite's defaults name metrics for its own tasks, run or not
    check_headline_metrics(task_objs, plan.reported, {t: m for t, m in cfg.suite.metrics.items() if t in run},
                           dict(cfg.suite.correct_if))
    config = models.check_model(cfg.model.path, cfg.model.revision, cfg.model.trust_remote_code,
                                gguf_file=cfg.model.gguf_file)
    limit, samples = evaluate.lm_eval_docs(task_objs, plan, cfg.suite.limit, dict(cfg.suite.task_limits))
    chat = evaluate.chat_settings(cfg.suite, tokenizer, cfg.model.path)  # refused here when asked for and missing
    for note in budget.check_context(task_objs, plan.reported, tokenizer, budget.context_length(config, tokenizer),
                                     limit, samples, cfg.eval.seed, chat):
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
    return settings(**fields)  # keys the method does not have keep the settings' defaults (bits: None for pruners)


def _needs_calibration(cfg: FlipbenchConfig) -> bool:
    from flipbench.compress import needs_data

    return cfg.compression.method in QUANT_METHODS + PRUNE_METHODS and needs_data(quant_config(cfg))


def estimate_work(model, tokenizer, task_objs, plan, cfg: FlipbenchConfig) -> console.Work:
    """The one line a person reads before evaluating: docs, requests, tokens and minutes per side."""
    work = console.estimate(task_objs, limits(task_objs, plan, cfg), model, tokenizer, cfg.eval.seed)
    log.info(work.line())
    return work


def evaluate_side(model, tokenizer, task_objs, plan, cfg: FlipbenchConfig, batch_size: int | None = None,
                  label: str = "side", work: console.Work | None = None, *, path: str | None = None,
                  shard_ids: dict | None = None, then=None) -> pd.DataFrame:
    """One side through lm-eval on the configured engine: ``model`` (hf) or the folder ``path`` (vllm; server
    models are named by the endpoint). ``shard_ids``: leaf -> doc ids of this shard (:func:`flipbench.shards.assign`).
    ``then(lm, frame)`` runs while the engine is still up (token KL through the engine's log-probs)."""
    from flipbench import engines

    revision = cfg.model.revision if path is not None and path == models.resolve_path(cfg.model.path) else None
    lm = engines.build_lm(cfg, model=model, tokenizer=tokenizer, path=path, batch_size=batch_size or cfg.eval.batch_size,
                          revision=revision)
    marker = cfg.suite.think_end
    if marker:  # lm-eval's models keep what follows the marker as the answer
        lm.think_end_token = marker
    chat = evaluate.chat_settings(cfg.suite, tokenizer, cfg.model.path)
    docs, requests = (work.docs, work.requests) if work else (0, 0)
    try:
        with console.side_progress(label, docs, requests), think_markers(lm, marker, label) as generations:
            raw = evaluate.run_lm_eval(lm, task_objs, plan, limit=cfg.suite.limit, num_fewshot=dict(cfg.suite.num_fewshot),
                                       seed=cfg.eval.seed, task_limits=dict(cfg.suite.task_limits), shard_ids=shard_ids,
                                       chat=chat)
        frame = evaluate.samples_frame(raw, task_objs, plan, dict(cfg.suite.metrics), cfg.suite.subject_field,
                                       dict(cfg.suite.correct_if))
        if marker:  # the reasoning span's length per doc, from the raw generations
            from flipbench import trajectory

            # vLLM generates with EOS as its only stop when a marker is set (lm-eval cuts the rest afterwards)
            trajectory.annotate_think(frame, generations, marker, tokenizer, trajectory.budgets(task_objs, plan),
                                      plan.reported, cut_at_stops=type(lm).__name__ != "VLLM")
        if then is not None:
            then(lm, frame)
    finally:
        engines.release(lm)
    return frame


class _Kept(str):
    """An answer as lm-eval's post-processing returned it, carrying the raw generation it was cut from."""

    raw: str


@contextmanager
def think_markers(lm, marker: str | None, label: str):
    """Yields {(leaf task, doc_id): (raw generation, the request's stop sequences)}, captured before lm-eval strips
    the reasoning span (everything up to the last ``suite.think_end``; lm-eval keeps what follows it), and warns when
    no generation holds the marker: a marker the model never writes strips nothing, silently.

    lm-eval's HF and vLLM models call ``postprocess_generated_text`` on each raw generation: it is wrapped to hand
    back the answer with the raw text attached, and ``lm.generate_until`` to file both by request. lm-eval's
    completions model (engine=server) strips no span: its raw text gets the same cut here."""
    captured: dict[tuple[str, int], tuple[str, list]] = {}
    if not marker:
        yield captured
        return
    import importlib
    import sys

    from lm_eval.models.utils import postprocess_generated_text

    for name in ("huggingface", "openai_completions"):
        importlib.import_module(f"lm_eval.models.{name}")
    modules = [sys.modules[f"lm_eval.models.{name}"] for name in ("huggingface", "openai_completions", "vllm_causallms")
               if f"lm_eval.models.{name}" in sys.modules]  # vLLM's only where its engine was built

    def keeping(generation, stop, think_end_token):
        answer = _Kept(postprocess_generated_text(generation, stop, think_end_token))
        answer.raw = str(generation)
        return answer

    generate = lm.generate_until

    def generate_until(requests, *args, **kwargs):
        answers = []
        for request, answer in zip(requests, generate(requests, *args, **kwargs)):
            if answer is not None and not isinstance(answer, _Kept):  # a model that strips nothing itself
                answer = keeping(answer, None, marker)
            if answer is not None:
                stops = (request.args[1] or {}).get("until") if len(request.args) > 1 else None
                captured.setdefault((request.task_name, int(request.doc_id)), (answer.raw, stops))
            answers.append(None if answer is None else str(answer))
        return answers

    saved = [module.postprocess_generated_text for module in modules]
    for module in modules:
        module.postprocess_generated_text = keeping
    lm.generate_until = generate_until
    try:
        yield captured
    finally:
        for module, original in zip(modules, saved):
            module.postprocess_generated_text = original
        del lm.generate_until
    held = sum(marker in raw for raw, _ in captured.values())
    if captured and not held:
        log.warning("suite.think_end=%r appears in none of the %s side's %d generations: nothing was stripped "
                    "(check the marker, or whether the model reasons at all)", marker, label, len(captured))
    elif captured:
        log.info("suite.think_end: %d of %d %s generations held the marker", held, len(captured), label)


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


def calibration_seed(cfg: FlipbenchConfig, replica: int = 0) -> int:
    """The calibration draw's seed: calibration.seed (default eval.seed) plus the replica's index."""
    base = cfg.calibration.seed if cfg.calibration.seed is not None else cfg.eval.seed
    return base + replica


def calibration_ids(cfg: FlipbenchConfig, tokenizer, task_objs: dict, evaluated: dict | None = None, replica: int = 0):
    """(calib, task_calib) token-id tensors for GPTQ Hessians and TACQ gradients; None for data-free methods.
    ``replica``: the compression replica whose draw this is (flipbench/replicas.py)."""
    from flipbench.compress import calibration as calib

    cal = cfg.calibration
    seed = calibration_seed(cfg, replica)
    if not _needs_calibration(cfg):
        return None, None

    def texts(source: str) -> list[str]:
        if source == "text":
            return calib.text_file_calibration_texts(cal.path)
        return calib.task_calibration_texts(task_objs, cal.n_samples, seed, eval_doc_hashes(
            task_objs, evaluated if evaluated is not None else dict.fromkeys(task_objs, cfg.suite.limit)))

    ids = calib.tokenize_calibration(tokenizer, texts(cal.source), cal.n_samples, cal.seq_len, seed)
    grad_ids = None
    if cfg.compression.method == "tacq":
        grad_ids = ids if cal.gradient_source == cal.source else calib.tokenize_calibration(
            tokenizer, texts(cal.gradient_source), cal.n_samples, cal.seq_len, seed)
    return ids, grad_ids


def compress(model, tokenizer, calibration, cfg: FlipbenchConfig, grids: dict | None = None):
    """Returns (compressed model, tokenizer, details for the manifest). Quantization and pruning work in place.

    ``calibration`` is the (calib, task_calib) pair from :func:`calibration_ids`, built before any evaluation;
    ``grids`` (for output.save_model) receives what the quantizer fitted per linear.
    """
    from flipbench.modelsize import checkpoint_size, evaluated_bytes

    method = cfg.compression.method
    if method == "none":
        return model, tokenizer, {"method": "none", "avg_bits": _native_bits(model), "model_bytes": evaluated_bytes(model)}
    if method == "checkpoint":
        comp_cfg = cfg.compression
        comp, comp_tok = models.load_model(cfg.model, comp_cfg.path or cfg.model.path, gguf_file=comp_cfg.gguf_file)
        return comp, comp_tok, {"method": "checkpoint", "path": comp_cfg.path, "avg_bits": _native_bits(comp),
                                **checkpoint_size(comp_cfg.path or cfg.model.path, comp_cfg.gguf_file)}
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
