"""How tight token KL's bounds are when both sides come from an engine's top-k log-probs (docs/engines.md).

    python -m benchmarks.bench_engine_kl --model results/real/smollm2-135m [--docs 20] [--ks 20 256]

The model (fp32) answers the bundled GSM8k-shaped task (synth_gsm8k: lm-eval's prompt, stop strings, greedy) on
engine=hf, the first --docs docs; a copy is RTN-quantized in process (--bits, per channel unless --group-size).
Both are served in turn by the completions server of the tests (tests/completions_server.py: prompt log-probs in
the shape vLLM's OpenAI server returns them), and token KL(base || comp) on the baseline's answers is computed
three ways per k:
- engine, top-k' on both sides (engine.max_logprobs = k): the baseline's top-k reference through the server, the
  compressed side's top-k' and answer token through the server, flipbench.engines.logprobs' partial bounds;
- the same reference against the compressed model's full vocabulary (what engine.max_logprobs=-1 or engine=hf
  give): flipbench.tokenkl's top-k bounds;
- exact: both HF models over the full vocabulary.
Token-weighted means over every answer token; the table also checks that each bound holds on every token. Needs
no vLLM (lm-eval's API extras for the server engine). Writes engine_kl.csv into --out and the table to
docs/measured/engine-kl.md (``--fragment``). This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

KS = (20, 256)
# fp32 log-probs summed in fp64: a bound may miss the exact value by this much and still hold
SLACK = 1e-4


def bounds_row(k: int, exact: np.ndarray, partial: tuple[np.ndarray, np.ndarray], full: tuple[np.ndarray, np.ndarray],
               same_top: tuple[np.ndarray, np.ndarray]) -> dict:
    """One table row from per-token arrays over every answer token: ``exact`` KL, the engine's ``partial`` (lower,
    upper) at top-k', tokenkl's ``full`` (lower, upper) from the top-k reference, ``same_top`` (engine's, exact)."""
    lower, upper = partial
    full_lower, full_upper = full
    hold = bool((lower <= exact + SLACK).all() and (exact <= upper + SLACK).all()
                and (full_lower <= exact + SLACK).all() and (exact <= full_upper + SLACK).all())
    return {"k": k, "tokens": len(exact), "exact": exact.mean(), "partial_lower": lower.mean(),
            "partial_share": lower.mean() / exact.mean() if exact.mean() > 0 else float("nan"),
            "partial_upper": upper.mean(), "partial_finite_upper": float(np.isfinite(upper).mean()),
            "full_lower": full_lower.mean(), "full_upper": full_upper.mean(),
            "same_top_engine": same_top[0].mean(), "same_top_exact": same_top[1].mean(), "bounds_hold": hold}


def markdown(rows: list[dict]) -> str:
    """The docs table: one line per k."""
    lines = ["| k (both sides) | exact mean KL | partial lower bound (engine, top-k') | its upper bound | "
             "tokenkl's bounds with the full q (hf, or max_logprobs -1) | same-top rate (engine / exact) | "
             "every bound holds per token |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        upper = "+inf" if np.isinf(r["partial_upper"]) else f"{r['partial_upper']:.3f}"
        lines.append(f"| {r['k']} | {r['exact']:.3f} | {r['partial_lower']:.3f} ({100 * r['partial_share']:.0f}% of "
                     f"exact) | {upper} (finite on {100 * r['partial_finite_upper']:.0f}% of tokens) | "
                     f"[{r['full_lower']:.3f}, {r['full_upper']:.3f}] | {r['same_top_engine']:.3f} / "
                     f"{r['same_top_exact']:.3f} | {'yes' if r['bounds_hold'] else 'NO'} |")
    return "\n".join(lines)


def tokens(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A per-token column of token_kl's frame, every row's tokens in order."""
    return np.concatenate([np.asarray(v, dtype=float) for v in frame[column]])


def generations(model_arg: str, docs: int, batch_size: int):
    """(config, tokenizer, baseline model, prompts, answers): the model's greedy answers to synth_gsm8k on engine=hf."""
    from benchmarks.bench_engines import evaluate, setup
    from flipbench import answerkl, engines, models

    side = setup(["model=hf", f"model.path={model_arg}", "model.dtype=float32", f"eval.batch_size={batch_size}",
                  "suite=tiny", "suite.tasks=[synth_gsm8k]", f"suite.limit={docs}"])
    model = models.load_model(side.cfg.model, tokenizer=side.tokenizer)[0]
    frame = evaluate(engines.build_lm(side.cfg, model=model, tokenizer=side.tokenizer, batch_size=batch_size), side)
    rows = answerkl._kl_rows(frame)
    return side.cfg, side.tokenizer, model, rows["prompt"].tolist(), rows["response"].tolist()


def measure(cfg, tokenizer, base, comp, prompts: list[str], answers: list[str], ks) -> list[dict]:
    """One :func:`bounds_row` per k, both models served in turn by the tests' completions server."""
    from flipbench import engines, tokenkl
    from tests.completions_server import serve

    def served(model):
        server = serve(model, tokenizer, cfg.model.path)
        url, _ = server.__enter__()
        lm = engines.build_lm(replace(cfg, engine=replace(cfg.engine, name="server", base_url=url)),
                              tokenizer=tokenizer, batch_size=1)
        return server, lm

    exact = tokenkl.token_kl(base, comp, tokenizer, prompts, answers)  # both models, full vocabulary
    server, lm = served(base)
    try:
        references = {k: engines.answer_reference(lm, tokenizer, prompts, answers, topk=k) for k in ks}
    finally:
        server.__exit__(None, None, None)
    server, lm = served(comp)
    try:
        partial = {k: engines.token_kl(references[k], lm, tokenizer, prompts, answers, topk=k) for k in ks}
    finally:
        server.__exit__(None, None, None)
    rows = []
    for k in ks:
        full = tokenkl.token_kl(references[k], comp, tokenizer, prompts, answers)
        rows.append(bounds_row(k, tokens(exact, "tok_kl"), (tokens(partial[k], "tok_kl"), tokens(partial[k], "tok_kl_upper")),
                               (tokens(full, "tok_kl"), tokens(full, "tok_kl_upper")),
                               (tokens(partial[k], "tok_same_top"), tokens(exact, "tok_same_top"))))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="results/real/smollm2-135m",
                        help="a transformers model folder (a relative path keeps machine paths out of the docs)")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=-1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    from benchmarks.provenance import add_fragment_option

    add_fragment_option(parser, "engine-kl")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if not args.model.startswith("bundled:") and not (Path(args.model) / "config.json").is_file():
        print(f"bench_engine_kl: skipped, no model at {args.model} (make real, or python -m benchmarks.real_setup)")
        return 0
    if min(args.ks) < 1:
        print(f"bench_engine_kl: --ks must be >= 1 (an engine's top-k), got {args.ks}", file=sys.stderr)
        return 2
    import torch

    from flipbench.compress import registry
    from flipbench.compress.quant.config import QuantConfig

    load = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cfg, tokenizer, base, prompts, answers = generations(args.model, args.docs, args.batch_size)
    comp = copy.deepcopy(base)
    registry.compress(comp, QuantConfig(method="rtn", bits=args.bits, group_size=args.group_size))
    rows = measure(cfg, tokenizer, base, comp, prompts, answers, sorted(set(args.ks)))
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out / "engine_kl.csv", index=False)
    group = "per channel" if args.group_size == -1 else f"group {args.group_size}"
    setup = (f"{Path(args.model).name} (fp32, vocabulary {len(tokenizer):,}) against its RTN {args.bits}-bit ({group}) copy; "
             f"token KL on its greedy answers to {len(prompts)} synth_gsm8k docs (lm-eval's prompt), {rows[0]['tokens']} "
             f"answer tokens, token-weighted means in nats; both sides' log-probs through the tests' completions server "
             f"(prompt log-probs as vLLM returns them); {seconds:.0f} s in all.")
    body = f"{setup}\n\n{markdown(rows)}"
    if args.fragment:
        from benchmarks.provenance import command_line, write_fragment

        write_fragment(args.fragment, command_line("benchmarks.bench_engine_kl", argv), body, load_at_start=load)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
