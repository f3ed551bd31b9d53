"""The real model in ``make bench``, when ``make real`` has put its files in place.

    python -m benchmarks.bench_real --real results/real --out results/bench [--rounds 3]

SmolLM2-135M-Instruct (fp32) against its RTN 4-bit copy saved as a checkpoint, on a slice of the real tier's
tasks (MMLU 5-shot with dev shots, ARC-Challenge, HellaSwag, Winogrande; docs per task below): flipbench's
cold and cached time against two plain lm-eval runs on the same tasks (:mod:`benchmarks.plain_lm_eval`),
interleaved (:mod:`benchmarks.overhead`); evaluation tokens/s against the fp32 matmul peak measured in the same
run; generation tokens/s and the thread-policy cases of :mod:`benchmarks.bench_threads`; the token-KL
reference's size and error per top-k (:mod:`benchmarks.bench_tokenkl`); each side's request rendering and
encoding on full MMLU, with and without reuse (:mod:`benchmarks.bench_requests`). Writes real_overhead.csv,
real_rounds.csv, real_throughput.csv, threads.csv, tokenkl.csv and real.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks import bench_threads, overhead, real, real_setup


def available(root: Path) -> bool:
    return (root / "smollm2-135m" / "config.json").exists() and real_setup.data_root(root / "pkgs").is_dir()


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=Path("results/real"))
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--rounds", type=int, default=3)
    real.add_slice_arguments(parser, subjects=3, arc=8, hellaswag=8, winogrande=8)
    parser.add_argument("--thread-rounds", type=int, default=2)
    parser.add_argument("--no-fragments", action="store_true", help="write no docs/measured/ fragments")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    args.argv = argv
    if not available(args.real):
        print(f"bench_real: {args.real} has no converted model and data (run `make real` first); skipped")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    model = (args.real / "smollm2-135m").resolve()
    data = real_setup.data_root((args.real / "pkgs").resolve())
    work = Path(tempfile.mkdtemp(prefix="flipbench-bench-real-"))
    try:
        return _bench(args, model, data, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(args, model: Path, data: Path, work: Path) -> int:
    import os

    from benchmarks.bench import matmul_peak, save_pair, throughput
    from benchmarks.provenance import command_line, write_fragment
    from flipbench.report import markdown_table

    load = os.getloadavg()[0]
    off = ["--fragment", ""] if args.no_fragments else []
    mmlu = real.mmlu_subset(data, work / "mmlu_subset", args.subjects)
    comp = save_pair(model, work / "smollm2_w4", 4)
    suite = real.suite_overrides(data, mmlu, args)
    flip = [sys.executable, "-m", "flipbench", "model=hf", f"model.path={model}", "model.dtype=float32",
            "model.name=smollm2", "compression=checkpoint", f"compression.path={comp}",
            f"eval.batch_size={args.batch_size}", *suite]
    lm_runs = [([sys.executable, "-m", "benchmarks.plain_lm_eval", "--model", str(d), "--batch-size",
                 str(args.batch_size), "--", *suite], Path.cwd()) for d in (model, comp)]
    rows = overhead.interleaved("smollm2-135m", flip, lm_runs, args.rounds, work)
    pd.DataFrame(rows).drop(columns=["cold_run", "cached_run"]).to_csv(args.out / "real_rounds.csv", index=False)
    over = pd.DataFrame(overhead.summary(rows))
    over.to_csv(args.out / "real_overhead.csv", index=False)
    if not args.no_fragments:
        write_fragment("real-overhead", command_line("benchmarks.bench_real", args.argv),
                       overhead.docs_table(overhead.summary(rows)).replace("| smollm2-135m ", "| SmolLM2-135M-Instruct ")
                       + f"\n\nSeconds: median (min–max) over {args.rounds} interleaved rounds.", load_at_start=load)
    thr = pd.DataFrame([{"model": "smollm2-135m", **throughput(Path(rows[0]["cold_run"]), matmul_peak())}])
    thr.to_csv(args.out / "real_throughput.csv", index=False)
    threads_argv = ["--model", str(model), "--rounds", str(args.thread_rounds), *off]
    threads_args = bench_threads.parse(threads_argv)
    threads_args.out = args.out
    bench_threads.run(model, args.out, threads_args)
    bench_threads.write(threads_args, threads_argv, load)
    from benchmarks import bench_tokenkl

    bench_tokenkl.main(["--model", str(model), "--out", str(args.out), *off])
    from benchmarks import bench_requests

    bench_requests.main(["--real", str(args.real), "--out", str(args.out), *off])
    sizes = (f"MMLU {args.subjects} subjects x {args.mmlu_docs} (5-shot), ARC-Challenge {args.arc_docs}, "
             f"HellaSwag {args.hellaswag_docs}, Winogrande {args.winogrande_docs} docs; batch {args.batch_size}")
    (args.out / "real.md").write_text(
        f"# Real model: SmolLM2-135M-Instruct vs its RTN w4 copy\n\n{sizes}\n\n## Overhead (median, min-max over "
        f"{args.rounds} interleaved rounds)\n\n{markdown_table(over.drop(columns='ratio_median'))}\n\n## Evaluation "
        f"throughput\n\n{markdown_table(thr)}\n\n## Generation\n\n{(args.out / 'threads.md').read_text()}\n"
        f"## Token-KL reference size and error\n\n{(args.out / 'tokenkl.md').read_text()}\n"
        f"## Per-side cost before the model runs\n\n{(args.out / 'requests.md').read_text()}")
    print((args.out / "real.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
