"""GSM8k through the chat template on a real model: where the greedy answers of a baseline and its RTN copies part
(trajectories), and token KL and top-1 agreement over the prompt's tokens against the baseline's answer (prefill
against answer), for RTN at several widths; plus the baseline's score on plain prompts, without the template.

    python -m benchmarks.gen_prefill --model results/real/smollm2-135m --gsm8k gsm8k --out results/gen_prefill

``--gsm8k``: a folder with GSM8k's ``test.jsonl`` and ``train.jsonl`` (the openai/grade-school-math files). One
``flipbench`` run per width through the chat template (the baseline is evaluated once, then read from the cache),
each writing its summary, and one ``flipbench collect side=baseline`` on plain prompts. Two tables go to the docs
through benchmarks.provenance: the trajectories (``--trajectory-fragment``, default
``docs/measured/gen-trajectory.md``) and prefill against answer (``--fragment``, default
``docs/measured/gen-prefill.md``), both from the headline strict-match row. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks.provenance import add_fragment_option, command_line, markdown_table, write_fragment

MAX_GEN_TOKS = 256  # lm-eval's gsm8k generation budget (flipbench.trajectory.DEFAULT_MAX_GEN_TOKS)


def _common(model: Path, gsm8k: Path, limit: int, batch: int) -> list[str]:
    return ["model=hf", f"model.path={model}", "model.name=real", "model.dtype=float32", "suite.tasks=[gsm8k]",
            f"suite.data_files.gsm8k={{test: {gsm8k}/test.jsonl, train: {gsm8k}/train.jsonl}}",
            f"suite.limit={limit}", f"eval.batch_size={batch}", "output.redo=true"]


def run(model: Path, gsm8k: Path, out: Path, bits: int, limit: int, batch: int) -> Path:
    """One flipbench run of RTN at ``bits`` through the chat template; returns its run folder."""
    run_dir = out / f"rtn-w{bits}"
    cmd = [sys.executable, "-m", "flipbench", *_common(model, gsm8k, limit, batch), "suite.chat_template=true",
           "compression=rtn", f"compression.bits={bits}", f"output.root={out}", f"output.run_dir={run_dir}",
           "output.plots=false"]
    subprocess.run(cmd, check=True)
    return run_dir


def plain_baseline(model: Path, gsm8k: Path, out: Path, limit: int, batch: int) -> pd.DataFrame:
    """The baseline alone on plain prompts (no chat template): per lm-eval filter, docs and docs answered right."""
    folder = out / "plain-baseline"
    cmd = [sys.executable, "-m", "flipbench", "collect", "side=baseline", *_common(model, gsm8k, limit, batch),
           "suite.chat_template=false", f"output.artifact={folder}"]
    subprocess.run(cmd, check=True)
    samples = pd.read_parquet(folder / "samples.parquet")
    return samples.groupby("filter")["correct"].agg(docs="count", right="sum").reset_index()


def headline(run_dir: Path) -> pd.Series:
    s = pd.read_csv(run_dir / "summary.csv")
    return s[(s["task"] == "gsm8k") & (s["group"] == "all") & s["headline"]].iloc[0]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _count(share: float, n: int) -> str:
    return f"{round(share * n)} of {n}"


def prefill_row(bits: int, r: pd.Series) -> dict:
    return {"RTN": f"w{bits}", "docs": int(r["n"]),
            "exact match base / comp": f"{r['acc_base']:.3f} / {r['acc_comp']:.3f}",
            "prompt tokens": int(r["prefill_tokens"]), "prompt KL (nats)": f"{r['prefill_kl_mean']:.4f} ± {r['prefill_kl_se']:.4f}",
            "prompt top-1": _pct(r["prefill_top1_agree"]), "answer tokens": int(r["n_tokens"]),
            "answer KL (nats)": f"{r['kl_mean']:.4f} ± {r['kl_se']:.4f}", "answer top-1": _pct(r["top1_agree"])}


def trajectory_column(r: pd.Series) -> dict:
    """One width's trajectory statistics (flipbench.trajectory's summary columns), as the table's column."""
    n = int(r["n"])
    survive = " / ".join(_pct(1 - r[f"div_at_{t}"]) for t in (1, 8, 32))
    return {"docs": str(n),
            "exact match, baseline": _count(r["acc_base"], n), "exact match, compressed": _count(r["acc_comp"], n),
            "flips (right to wrong / wrong to right)": f"{_count(r['flips'], n)} ({round(r['lost'] * n)} / "
                                                        f"{round(r['gained'] * n)})",
            "identical generations": _count(r["gen_identical"], n),
            "survival S(1) / S(8) / S(32)": survive,
            "first divergent token, median": f"{r['first_div_median']:g}",
            "length ratio comp/base, median": f"{r['len_ratio_median']:.2f}",
            f"answers cut at max_gen_toks ({MAX_GEN_TOKS}), base / comp": f"{_pct(r['trunc_base'])} / {_pct(r['trunc_comp'])}",
            "token KL(base ‖ comp), mean (nats)": f"{r['kl_mean']:.2f}",
            "top-1 agreement / top-5 overlap on the baseline's answer": f"{_pct(r['top1_agree'])} / {_pct(r['top5_overlap'])}"}


def trajectory_body(rows: dict[int, pd.Series], plain: pd.DataFrame) -> str:
    table = pd.DataFrame({f"RTN w{bits}": trajectory_column(r) for bits, r in rows.items()})
    table = table.rename_axis("").reset_index()
    chat = next(iter(rows.values()))
    scores = pd.DataFrame([{"": "baseline exact match", **{
        f"plain prompts, {f}": f"{int(right)} of {int(docs)}" for f, docs, right in plain.itertuples(index=False)},
        "chat template, strict-match": _count(chat["acc_base"], int(chat["n"]))}])
    return ("GSM8k, first docs of the test split, 5-shot as lm-eval's gsm8k. The baseline alone, on plain prompts "
            "(`flipbench collect side=baseline suite.chat_template=false`) and through the chat template:\n\n"
            + markdown_table(scores) + "\n\nThrough the chat template, against RTN copies (strict-match row; survival "
            "S(t): the share of answers whose two greedy generations agree on their first t tokens; token statistics "
            "teacher-forced on the baseline's answer):\n\n" + markdown_table(table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--gsm8k", type=Path, required=True, help="folder with GSM8k's test.jsonl and train.jsonl")
    parser.add_argument("--out", type=Path, default=Path("results/gen_prefill"))
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    add_fragment_option(parser, "gen-prefill")
    parser.add_argument("--trajectory-fragment", default="gen-trajectory",
                        help="docs/measured/<NAME>.md for the trajectory table (default gen-trajectory; '' for none)")
    args = parser.parse_args(argv)
    missing = [f for f in ("test.jsonl", "train.jsonl") if not (args.gsm8k / f).is_file()]
    if missing:
        parser.exit(2, f"gen_prefill: --gsm8k {args.gsm8k} lacks {', '.join(missing)}; pass the folder holding "
                       "openai/grade-school-math's grade_school_math/data/test.jsonl and train.jsonl\n")
    if not (args.model / "config.json").is_file():
        parser.exit(2, f"gen_prefill: --model {args.model} holds no config.json; pass a transformers model folder "
                       "(make real writes results/real/smollm2-135m)\n")
    model, gsm8k, out = args.model.resolve(), args.gsm8k.resolve(), args.out.resolve()
    load, start = os.getloadavg()[0], time.perf_counter()
    plain = plain_baseline(model, gsm8k, out, args.limit, args.batch_size)
    rows = {bits: headline(run(model, gsm8k, out, bits, args.limit, args.batch_size)) for bits in args.bits}
    command = command_line("benchmarks.gen_prefill", list(sys.argv[1:] if argv is None else argv))
    wall = (f"{time.perf_counter() - start:.0f} s wall in all: the plain-prompt baseline, then one run per width (its "
            "baseline evaluated in the first and read from the cache after).")
    if args.trajectory_fragment:
        print(write_fragment(args.trajectory_fragment, command, trajectory_body(rows, plain) + "\n\n" + wall,
                             load_at_start=load))
    if args.fragment:
        body = ("GSM8k (first docs of the test split, 5-shot as lm-eval's gsm8k, through the chat template), "
                "strict-match row; KL(baseline ‖ compressed), token-weighted, ± doc-clustered SE; both sides "
                "teacher-forced on the same prompt and on the baseline's answer.\n\n"
                + markdown_table(pd.DataFrame([prefill_row(bits, r) for bits, r in rows.items()])) + "\n\n" + wall)
        print(write_fragment(args.fragment, command, body, load_at_start=load))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
