"""Prefill against answer on a real model: token KL and top-1 agreement over the prompt's tokens and over the
baseline's answer, for RTN at several widths, on real GSM8k through the chat template.

    python -m benchmarks.gen_prefill --model results/real/smollm2-135m --gsm8k gsm8k --out results/gen_prefill

``--gsm8k``: a folder with GSM8k's ``test.jsonl`` and ``train.jsonl`` (the openai/grade-school-math files). One
``flipbench`` run per width (the baseline is evaluated once, then read from the cache), each writing its summary;
the table (headline strict-match row) goes to ``docs/measured/gen-prefill.md`` through benchmarks.provenance.
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmarks.provenance import markdown_table, write_fragment


def run(model: Path, gsm8k: Path, out: Path, bits: int, limit: int, batch: int) -> Path:
    """One flipbench run of RTN at ``bits``; returns its run folder."""
    run_dir = out / f"rtn-w{bits}"
    cmd = [sys.executable, "-m", "flipbench", "model=hf", f"model.path={model}", "model.name=real", "model.dtype=float32",
           "suite.tasks=[gsm8k]", f"suite.data_files.gsm8k={{test: {gsm8k}/test.jsonl, train: {gsm8k}/train.jsonl}}",
           f"suite.limit={limit}", f"eval.batch_size={batch}", "suite.chat_template=true", "compression=rtn",
           f"compression.bits={bits}", f"output.root={out}", f"output.run_dir={run_dir}", "output.plots=false"]
    subprocess.run(cmd, check=True)
    return run_dir


def row(bits: int, run_dir: Path) -> dict:
    s = pd.read_csv(run_dir / "summary.csv")
    r = s[(s["task"] == "gsm8k") & (s["group"] == "all") & s["headline"]].iloc[0]
    return {"RTN": f"w{bits}", "docs": int(r["n"]),
            "exact match base / comp": f"{r['acc_base']:.3f} / {r['acc_comp']:.3f}",
            "prompt tokens": int(r["prefill_tokens"]), "prompt KL (nats)": f"{r['prefill_kl_mean']:.4f} ± {r['prefill_kl_se']:.4f}",
            "prompt top-1": f"{100 * r['prefill_top1_agree']:.1f}%", "answer tokens": int(r["n_tokens"]),
            "answer KL (nats)": f"{r['kl_mean']:.4f} ± {r['kl_se']:.4f}", "answer top-1": f"{100 * r['top1_agree']:.1f}%"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--gsm8k", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("results/gen_prefill"))
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    rows = [row(bits, run(args.model.resolve(), args.gsm8k.resolve(), args.out.resolve(), bits, args.limit,
                          args.batch_size)) for bits in args.bits]
    command = (f"python -m benchmarks.gen_prefill --model <model> --gsm8k <gsm8k folder> --limit {args.limit} "
               f"--bits {' '.join(map(str, args.bits))}")
    body = ("GSM8k (first docs of the test split, 5-shot as lm-eval's gsm8k, through the chat template), strict-match "
            "row; KL(baseline ‖ compressed), token-weighted, ± doc-clustered SE; both sides teacher-forced on the same "
            "prompt and on the baseline's answer.\n\n" + markdown_table(pd.DataFrame(rows)))
    print(write_fragment("gen-prefill", command, body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
