"""Benchmark the token-KL reference: size, build time and the KL interval of a top-k baseline reference vs k.

    python -m benchmarks.bench_tokenkl --model <model dir> --out results/bench

Writes tokenkl.csv and tokenkl.md, and the table to docs/measured/tokenkl.md (``--fragment``). Setup: the model (fp32) greedily answers --prompts synth GSM8k questions
(one-shot prompt from the synth train split, --max-new-tokens tokens each); a copy is RTN-quantized in process
(--bits, --group-size). For each k in --ks (0 = the full vocabulary) the baseline's reference is built
(flipbench.tokenkl.answer_logprobs, timed: one forward pass + the top-k), written to a baseline cache
(flipbench.cache.BaselineCache, its file size is `reference_bytes`), and token KL is computed from it against
the quantized copy. Per k: bytes, bytes per answer token, the baseline's mean mass outside the top k, build and
KL seconds, the token-weighted mean KL (the reported lower end), the mean upper bound, the exact mean KL (from
the full reference), and the largest per-token distance of each bound from the exact KL. Skips (exit 0) when the
model folder is missing.
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent.parent / "tasks" / "synth" / "data"
KS = (16, 64, 256, 1024, 0)
COLUMNS = ["k", "tokens", "reference_bytes", "bytes_per_token", "tail_mass", "build_s", "kl_s", "kl_mean",
           "kl_mean_upper", "kl_exact", "max_lower_gap", "max_upper_gap"]


def prompts_and_shot(n: int) -> list[str]:
    """n one-shot prompts: a worked synth train example, then a synth test question."""
    shot = json.loads((DATA / "synth_gsm8k_train.jsonl").read_text().splitlines()[0])
    lines = (DATA / "synth_gsm8k_test.jsonl").read_text().splitlines()[:n]
    head = f"Question: {shot['question']}\nAnswer: {shot['answer']}\n\n"
    return [f"{head}Question: {json.loads(line)['question']}\nAnswer:" for line in lines]


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers, batched with left padding; the decoded new tokens only."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def measure(model, comp, tokenizer, prompts, answers, ks, batch_size: int, folder: Path) -> list[dict]:
    """One row per k (full vocabulary last, as the exact values every row is compared with)."""
    from flipbench.cache import BaselineCache
    from flipbench.tokenkl import answer_logprobs, token_kl

    store = BaselineCache(folder)
    raw = {}
    for k in sorted(ks, key=lambda k: k == 0):
        start = time.perf_counter()
        reference = answer_logprobs(model, tokenizer, prompts, answers, batch_size=batch_size, topk=k)
        build_s = time.perf_counter() - start
        store.store_reference(f"k{k}", {(i,): row for i, row in enumerate(reference)}, topk=k)
        start = time.perf_counter()
        frame = token_kl(reference, comp, tokenizer, prompts, answers, batch_size=batch_size)
        kl_s = time.perf_counter() - start
        tokens = int(frame["n_tokens"].sum())
        tail = torch.cat([row.log_tail for row in reference]).double().exp()  # baseline mass outside the top-k
        raw[k] = {"k": k, "reference_bytes": store._reference_paths(f"k{k}")[0].stat().st_size, "tokens": tokens,
                  "tail_mass": float(tail.mean()) if len(tail) else 0.0,
                  "build_s": build_s, "kl_s": kl_s,
                  "lower": np.concatenate([np.asarray(v, float) for v in frame["tok_kl"]]),
                  "upper": np.concatenate([np.asarray(v, float) for v in frame["tok_kl_upper"]])}
    exact = raw[0]["lower"]
    return [{"k": r["k"] or "full", "tokens": r["tokens"], "reference_bytes": r["reference_bytes"],
             "bytes_per_token": round(r["reference_bytes"] / r["tokens"]), "tail_mass": r["tail_mass"],
             "build_s": round(r["build_s"], 2),
             "kl_s": round(r["kl_s"], 2), "kl_mean": r["lower"].mean(), "kl_mean_upper": r["upper"].mean(),
             "kl_exact": exact.mean(), "max_lower_gap": float((exact - r["lower"]).max()),
             "max_upper_gap": float((r["upper"] - exact).max())} for r in raw.values()]


def markdown(rows: list[dict], setup: str) -> str:
    lines = [f"# Token-KL reference vs k\n\n{setup}\n",
             "| k | reference MB | bytes/token | mean tail mass | build s | KL s | mean KL (reported) | mean upper bound "
             "| exact mean KL | max exact − lower | max upper − exact |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['k']} | {r['reference_bytes'] / 2**20:.2f} | {r['bytes_per_token']:,} | {100 * r['tail_mass']:.2f}% "
                     f"| {r['build_s']:.1f} "
                     f"| {r['kl_s']:.1f} | {r['kl_mean']:.5f} | {r['kl_mean_upper']:.5f} | {r['kl_exact']:.5f} "
                     f"| {r['max_lower_gap']:.2e} | {r['max_upper_gap']:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a transformers model directory")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS), help="top-k sizes; 0 = full vocabulary")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fragment", default="tokenkl", help="docs/measured/<NAME>.md ('' for none)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    if not (args.model / "config.json").is_file():
        print(f"bench_tokenkl: skipped, no model at {args.model}")
        return 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flipbench.compress import registry
    from flipbench.compress.quant.config import QuantConfig

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    prompts = prompts_and_shot(args.prompts)
    start = time.perf_counter()
    answers = generate(model, tokenizer, prompts, args.max_new_tokens)
    gen_s = time.perf_counter() - start
    comp = copy.deepcopy(model)
    registry.compress(comp, QuantConfig(method="rtn", bits=args.bits, group_size=args.group_size))
    ks = sorted(set(args.ks) | {0}, key=lambda k: (k == 0, k))
    with tempfile.TemporaryDirectory() as folder:
        rows = measure(model, comp, tokenizer, prompts, answers, ks, args.batch_size, Path(folder))
    vocab = model.get_output_embeddings().weight.shape[0]
    setup = (f"Model {args.model.name} (vocabulary {vocab:,}, fp32) vs its RTN w{args.bits} g{args.group_size} copy; "
             f"{len(prompts)} synth GSM8k one-shot prompts, greedy answers of <= {args.max_new_tokens} tokens "
             f"(generated in {gen_s:.0f} s), {rows[-1]['tokens']:,} answer tokens; torch threads {args.threads}. "
             "Reference MB: the cache file (torch.save); KL s: the compressed model's pass + the bounds.")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "tokenkl.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "tokenkl.md").write_text(markdown(rows, setup))
    if args.fragment:
        from benchmarks.provenance import as_fragment, command_line, write_fragment

        write_fragment(args.fragment, command_line("benchmarks.bench_tokenkl", argv), as_fragment(markdown(rows, setup)),
                       load_at_start=load)
    print(markdown(rows, setup))
    return 0


if __name__ == "__main__":
    sys.exit(main())
