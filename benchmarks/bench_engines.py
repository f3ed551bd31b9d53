"""engine=hf against engine=vllm on SmolLM2-135M-Instruct, in the vLLM venv (make setup-vllm; `make real` or
``python -m benchmarks.real_setup --scratch results/real`` puts the model and data in place).

    .venv-vllm/bin/python -m benchmarks.bench_engines --real results/real --out results/bench [--rounds 2]

Multiple choice: ARC-Challenge (the real tier's validation split, --arc-docs docs, lm-eval's prompt).
Generation: the bundled GSM8k-shaped task (synth_gsm8k: GSM8k's prompt format, stop strings and filters; greedy,
48 new tokens at most; --gen-docs docs). The same model folder, fp32 on both engines. Rounds interleave the two
engines, alternating which goes first. Per round and engine: start seconds (HF: load the model; vLLM: start the
engine), evaluation wall seconds per task type, and tokens/s (the requests' prompt + continuation tokens, and for
generation the generated tokens, over the evaluation's wall time). Per-doc agreement from the first round: same
answers, max |Δ log-likelihood| (MC), identical generations. With --logprob-rows N (default 10; 0 skips), the
first vLLM round also times token KL's prompt log-probs on N generative rows (the baseline's top-256 reference,
the compressed side's top-20, its full vocabulary) and checks the reference against flipbench.tokenkl's on HF.
Writes engines.csv and engines.md into --out, the speed table to docs/measured/engines.md (--fragment) and the
log-prob costs to docs/measured/engines-logprobs.md (--logprob-fragment).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import real_setup


@dataclass
class Side:
    cfg: object
    plan: object
    tasks: dict
    tokenizer: object


def setup(overrides: list[str]) -> Side:
    from hydra import compose, initialize_config_dir

    from flipbench import pipeline
    from flipbench.cli import CONF_DIR
    from flipbench.config import to_typed

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_typed(compose(config_name="config", overrides=overrides))
    plan = pipeline.preflight(cfg)
    tasks, tokenizer, _ = pipeline.prepare(cfg, plan)
    return Side(cfg, plan, tasks, tokenizer)


def evaluate(lm, s: Side) -> pd.DataFrame:
    from flipbench import evaluate as ev

    cfg = s.cfg
    raw = ev.run_lm_eval(lm, s.tasks, s.plan, limit=cfg.suite.limit, num_fewshot=dict(cfg.suite.num_fewshot),
                         seed=cfg.eval.seed, task_limits=dict(cfg.suite.task_limits))
    return ev.samples_frame(raw, s.tasks, s.plan, dict(cfg.suite.metrics), cfg.suite.subject_field)


def tokens(frame: pd.DataFrame, tokenizer) -> tuple[int, int]:
    """(prompt + continuation tokens the requests carry, generated tokens), one row per distinct doc."""
    rows = frame.drop_duplicates(["task", "doc_id"])
    n = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    mc = rows[rows["output_type"] == "multiple_choice"]
    gen = rows[rows["output_type"] == "generate_until"]
    generated = sum(n(r) for r in gen["response"])
    prompts = sum(n(p) * len(c) + sum(n(" " + x) for x in c) for p, c in zip(mc["prompt"], mc["choices"]))
    return prompts + sum(n(p) for p in gen["prompt"]) + generated, generated


def run_engine(name: str, sides: dict[str, Side], model_dir: Path, batch_size: int, then=None):
    """(start seconds, {kind: (frame, wall seconds)}) for one engine over both task types; ``then(lm, out)`` runs
    while the engine is still up."""
    from flipbench import engines, models

    cfg = replace(sides["mc"].cfg, engine=replace(sides["mc"].cfg.engine, name=name))
    start = time.perf_counter()
    if name == "hf":
        model = models.load_model(cfg.model, tokenizer=sides["mc"].tokenizer)[0]
        lm = engines.build_lm(cfg, model=model, tokenizer=sides["mc"].tokenizer, batch_size=batch_size)
    else:
        lm = engines.build_lm(cfg, path=str(model_dir), batch_size=batch_size)
    started = time.perf_counter() - start
    out = {}
    try:
        for kind, s in sides.items():
            t = time.perf_counter()
            frame = evaluate(lm, s)
            out[kind] = (frame, time.perf_counter() - t)
        if then is not None:
            then(lm, out)
    finally:
        engines.release(lm)
    return started, out


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    m = a.merge(b, on=["task", "group", "doc_id", "filter"], suffixes=("_hf", "_vllm"))
    dll = [float(np.max(np.abs(np.subtract(x, y)))) for x, y in zip(m["ll_hf"], m["ll_vllm"]) if len(x)]
    gen = m[m["output_type_hf"] == "generate_until"].drop_duplicates(["task", "doc_id"])
    return {"rows": len(m), "same_answer": int((m["pred_hf"] == m["pred_vllm"]).sum()),
            "max_abs_dll": max(dll, default=float("nan")),
            "same_generation": int((gen["response_hf"] == gen["response_vllm"]).sum()), "generations": len(gen)}


def logprob_costs(lm, tokenizer, model_cfg, frame: pd.DataFrame, rows: int, k_ref: int = 256,
                  k_scoring: int = 20) -> dict:
    """What token KL through vLLM costs per number of log-probs asked (flipbench.engines.logprobs), on the first
    ``rows`` generative rows of ``frame`` with their own answers, the engine's model scored against itself: seconds
    for the baseline's top-``k_ref`` reference, the compressed side's top-``k_scoring`` and its full vocabulary (-1);
    and the reference against flipbench.tokenkl's from the HF model (top-1 ids, log-prob differences)."""
    from flipbench import answerkl, engines, models, tokenkl
    from flipbench.engines.logprobs import _rows

    kl_rows = answerkl._kl_rows(frame).head(rows)
    prompts, answers = kl_rows["prompt"].tolist(), kl_rows["response"].tolist()
    encoded = _rows(tokenizer, prompts, answers)
    out = {"rows": len(prompts), "positions": sum(len(ids) for ids, _ in encoded),
           "answer_tokens": sum(len(ids) - first for ids, first in encoded), "vocab": len(tokenizer),
           "k_ref": k_ref, "k_scoring": k_scoring}
    t = time.perf_counter()
    reference = engines.answer_reference(lm, tokenizer, prompts, answers, topk=k_ref)
    out["reference_s"] = time.perf_counter() - t
    for name, k in (("topk", k_scoring), ("full", None)):
        t = time.perf_counter()
        scored = engines.token_kl(reference, lm, tokenizer, prompts, answers, topk=k)
        out[f"{name}_s"] = time.perf_counter() - t
        out[f"{name}_max_kl"] = float(np.max(np.concatenate([np.asarray(v, float) for v in scored["tok_kl"]])))
    model = models.load_model(model_cfg, tokenizer=tokenizer)[0]  # the same folder and dtype on HF
    hf = tokenkl.answer_logprobs(model, tokenizer, prompts, answers, topk=k_ref)
    got, want = tokenkl._cat(reference), tokenkl._cat(hf)
    out["same_top1"] = int((got.ids[:, 0] == want.ids[:, 0]).sum())
    out["max_abs_dlogp_topk"] = float((got.logp - want.logp).abs().max())
    out["max_abs_dlogp_answer"] = float((got.target - want.target).abs().max())
    return out


def speed_markdown(table: pd.DataFrame, agree: dict) -> str:
    """Per-round values, their medians, vLLM's speed-up over HF (medians) and the first round's per-doc agreement."""
    columns = ["round", "engine", "kind", "docs", "start_s", "wall_s", "tokens_per_s", "generated_per_s"]
    med = table.groupby(["engine", "kind"]).agg(start_s=("start_s", "median"), wall_s=("wall_s", "median"),
                                                tokens_per_s=("tokens_per_s", "median"),
                                                generated_per_s=("generated_per_s", "median")).reset_index()
    at = med.set_index(["engine", "kind"])
    ratio = lambda kind, col: at.loc[("vllm", kind), col] / at.loc[("hf", kind), col]  # noqa: E731
    return "\n".join([
        "Per round (start: HF loads the model, vLLM starts its engine; wall: the evaluation of one task type):", "",
        _markdown(table[columns]), "", "Medians over rounds:", "", _markdown(med), "",
        f"vLLM over HF (medians): {ratio('gen', 'generated_per_s'):.1f}x the generated tokens/s, "
        f"{ratio('mc', 'tokens_per_s'):.1f}x the multiple-choice tokens/s; a start of {at.loc[('vllm', 'mc'), 'start_s']:.0f} s "
        f"against {at.loc[('hf', 'mc'), 'start_s']:.1f} s.", "",
        "Per-doc agreement (first round): " + "; ".join(_agreement_text(k, a) for k, a in agree.items()) + "."])


def _markdown(frame: pd.DataFrame) -> str:
    """A pipe table with empty cells where a value does not apply (NaN)."""
    return frame.astype(object).where(frame.notna(), None).to_markdown(index=False, missingval="")


def _agreement_text(kind: str, a: dict) -> str:
    parts = [f"{a['same_answer']}/{a['rows']} same answers" + (" (a row per GSM8k filter)" if a["generations"] else "")]
    if a["max_abs_dll"] == a["max_abs_dll"]:  # not NaN: the kind scores choices
        parts.append(f"max |Δ log-likelihood| {a['max_abs_dll']:.1e}")
    if a["generations"]:
        parts.append(f"{a['same_generation']}/{a['generations']} identical generations")
    return f"{kind}: " + ", ".join(parts)


def logprob_markdown(c: dict) -> str:
    """The log-prob costs table (:func:`logprob_costs`)."""
    return "\n".join([
        f"{c['rows']} generative rows ({c['answer_tokens']} answer tokens, {c['positions']} prompt + answer positions, "
        f"vocabulary {c['vocab']:,}), the engine's model scored against itself:", "",
        "| log-probs per position asked of vLLM | what for | seconds |", "|---|---|---|",
        f"| top-{c['k_ref']} | the baseline's reference | {c['reference_s']:.1f} |",
        f"| top-{c['k_scoring']} and the answer token | compressed side, partial bounds (default) | {c['topk_s']:.1f} |",
        f"| full vocabulary (-1) | compressed side, tokenkl's top-k bounds | {c['full_s']:.1f} |", "",
        f"The top-{c['k_ref']} reference against flipbench.tokenkl's from the HF model: top-1 ids equal on "
        f"{c['same_top1']}/{c['answer_tokens']} answer tokens, max |Δ log-prob| {c['max_abs_dlogp_topk']:.1e} over the "
        f"top-{c['k_ref']}, {c['max_abs_dlogp_answer']:.1e} at the answer token; largest token KL of the model against "
        f"itself {c['topk_max_kl']:.1e} (top-{c['k_scoring']}), {c['full_max_kl']:.1e} (full)."])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=Path("results/real"))
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--arc-docs", type=int, default=100)
    parser.add_argument("--gen-docs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--logprob-rows", type=int, default=10,
                        help="generative rows for the log-prob costs of token KL (first vLLM round; 0: skip)")
    parser.add_argument("--fragment", default="engines", help="docs/measured/<NAME>.md ('' for none)")
    parser.add_argument("--logprob-fragment", default="engines-logprobs",
                        help="docs/measured/<NAME>.md for the log-prob costs ('' for none)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if min(args.rounds, args.arc_docs, args.gen_docs, args.batch_size) < 1 or args.logprob_rows < 0:
        print("bench_engines: --rounds, --arc-docs, --gen-docs and --batch-size must be >= 1, --logprob-rows >= 0",
              file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    model_dir, data = args.real / "smollm2-135m", real_setup.data_root(args.real / "pkgs")
    if not (model_dir / "config.json").exists() or not data.is_dir():
        print(f"bench_engines: skipped, no real model in {args.real} (make real, or python -m benchmarks.real_setup)")
        return 0
    from flipbench.engines import vllm

    if vllm.distribution() is None:
        print("bench_engines: skipped, vLLM is not installed here (make setup-vllm; run with .venv-vllm/bin/python)")
        return 0
    common = ["model=hf", f"model.path={model_dir}", "model.dtype=float32", f"eval.batch_size={args.batch_size}",
              "engine=vllm", "engine.gpu_memory_utilization=0.2"]
    arc = f"{{test:{data / 'ai2_arc' / 'ARC-Challenge' / 'validation'}}}"
    sides = {"mc": setup([*common, "suite=standard", "suite.tasks=[arc_challenge]", f"suite.data_files.arc_challenge={arc}",
                          f"+suite.task_limits.arc_challenge={args.arc_docs}"]),
             "gen": setup([*common, "suite=tiny", "suite.tasks=[synth_gsm8k]", f"suite.limit={args.gen_docs}"])}
    costs = {}

    def measure_logprobs(lm, out):
        if args.logprob_rows and not costs:
            costs.update(logprob_costs(lm, sides["gen"].tokenizer, sides["gen"].cfg.model, out["gen"][0],
                                       args.logprob_rows))

    rows, first = [], {}
    for r in range(args.rounds):
        for name in (("hf", "vllm") if r % 2 == 0 else ("vllm", "hf")):
            started, out = run_engine(name, sides, model_dir, args.batch_size,
                                      then=measure_logprobs if name == "vllm" else None)
            for kind, (frame, wall) in out.items():
                total, generated = tokens(frame, sides[kind].tokenizer)
                rows.append({"round": r + 1, "engine": name, "kind": kind,
                             "docs": frame.drop_duplicates(["task", "doc_id"]).shape[0],
                             "start_s": round(started, 1), "wall_s": round(wall, 2), "tokens_per_s": round(total / wall, 1),
                             "generated_per_s": round(generated / wall, 1) if kind == "gen" else None})
                first.setdefault((name, kind), frame)
            print(rows[-2:], flush=True)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "engines.csv", index=False)
    agree = {kind: agreement(first[("hf", kind)], first[("vllm", kind)]) for kind in sides}
    from importlib import metadata

    dist = vllm.distribution()
    setup_line = (f"{model_dir.name} (fp32) on {dist} {metadata.version(dist)} against HF (lm-eval's HFLM, batch "
                  f"{args.batch_size}): {args.arc_docs} ARC-Challenge validation docs (lm-eval's prompt, multiple "
                  f"choice) and {args.gen_docs} synth_gsm8k docs (GSM8k's prompt format and stop strings, greedy, at "
                  f"most 48 new tokens); {args.rounds} round{'s' * (args.rounds > 1)}, the engines interleaved and alternating which goes "
                  "first. "
                  "Tokens/s: the requests' prompt + continuation tokens (and the generated tokens) over the wall time.")
    report = f"{setup_line}\n\n{speed_markdown(table, agree)}"
    if costs:
        report += f"\n\nLog-prob costs of token KL through vLLM:\n\n{logprob_markdown(costs)}"
    (args.out / "engines.md").write_text(f"# engine=hf vs engine=vllm\n\n{report}\n")
    from benchmarks.provenance import command_line, write_fragment

    command = ".venv-vllm/bin/" + command_line("benchmarks.bench_engines", argv)
    if args.fragment:
        write_fragment(args.fragment, command, f"{setup_line}\n\n{speed_markdown(table, agree)}", load_at_start=load)
    if args.logprob_fragment and costs:
        write_fragment(args.logprob_fragment, command, f"{model_dir.name} (fp32) on {dist} {metadata.version(dist)}; "
                       f"{logprob_markdown(costs)}", load_at_start=load)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
