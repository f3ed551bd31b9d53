"""engine=hf against engine=vllm on SmolLM2-135M-Instruct, in the vLLM venv (make setup-vllm; `make real` or
``python -m benchmarks.real_setup --scratch results/real`` puts the model and data in place).

    .venv-vllm/bin/python -m benchmarks.bench_engines --real results/real --out results/bench [--rounds 2]

Multiple choice: ARC-Challenge (the real tier's validation split, --arc-docs docs, lm-eval's prompt).
Generation: the bundled GSM8k-shaped task (synth_gsm8k: GSM8k's prompt format, stop strings and filters; greedy,
48 new tokens at most; --gen-docs docs). The same model folder, fp32 on both engines. Rounds interleave the two
engines, alternating which goes first. Per round and engine: start seconds (HF: load the model; vLLM: start the
engine), evaluation wall seconds per task type, and tokens/s (the requests' prompt + continuation tokens, and for
generation the generated tokens, over the evaluation's wall time). Per-doc agreement from the first round: same
answers, max |Δ log-likelihood| (MC), identical generations. Writes engines.csv and engines.md into --out.
"""

from __future__ import annotations

import argparse
import statistics
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


def run_engine(name: str, sides: dict[str, Side], model_dir: Path, batch_size: int):
    """(start seconds, {kind: (frame, wall seconds)}) for one engine over both task types."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=Path("results/real"))
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--arc-docs", type=int, default=100)
    parser.add_argument("--gen-docs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fragment", default="engines", help="docs/measured/<NAME>.md ('' for none)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    import os

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
    rows, first = [], {}
    for r in range(args.rounds):
        for name in (("hf", "vllm") if r % 2 == 0 else ("vllm", "hf")):
            started, out = run_engine(name, sides, model_dir, args.batch_size)
            for kind, (frame, wall) in out.items():
                total, generated = tokens(frame, sides[kind].tokenizer)
                rows.append({"round": r, "engine": name, "kind": kind, "docs": frame.drop_duplicates(["task", "doc_id"]).shape[0],
                             "start_s": round(started, 1), "wall_s": round(wall, 2), "tokens_per_s": round(total / wall, 1),
                             "generated_per_s": round(generated / wall, 1) if kind == "gen" else None})
                first.setdefault((name, kind), frame)
            print(rows[-2:], flush=True)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "engines.csv", index=False)
    agree = {kind: agreement(first[("hf", kind)], first[("vllm", kind)]) for kind in sides}
    med = table.groupby(["engine", "kind"]).agg(start_s=("start_s", "median"), wall_s=("wall_s", "median"),
                                                tokens_per_s=("tokens_per_s", "median"),
                                                generated_per_s=("generated_per_s", "median")).reset_index()
    lines = ["# engine=hf vs engine=vllm (SmolLM2-135M-Instruct, fp32)", "",
             f"Command: `.venv-vllm/bin/python -m benchmarks.bench_engines --rounds {args.rounds} --arc-docs "
             f"{args.arc_docs} --gen-docs {args.gen_docs} --batch-size {args.batch_size}`; medians over rounds.", "",
             med.to_markdown(index=False), "",
             "Per-doc agreement (first round): " + "; ".join(
                 f"{k}: {a['same_answer']}/{a['rows']} same answers, max |Δll| {a['max_abs_dll']:.1e}, "
                 f"{a['same_generation']}/{a['generations']} identical generations" for k, a in agree.items())]
    (args.out / "engines.md").write_text("\n".join(lines) + "\n")
    if args.fragment:
        from benchmarks.provenance import command_line, write_fragment

        from importlib import metadata

        dist = vllm.distribution()
        body = "\n".join([f"{dist} {metadata.version(dist)} against HF; medians over {args.rounds} interleaved rounds.",
                          "", *lines[4:]])
        write_fragment(args.fragment, ".venv-vllm/bin/" + command_line("benchmarks.bench_engines", argv), body,
                       load_at_start=load)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
