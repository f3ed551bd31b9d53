"""``make bench``: flipbench against plain lm-eval, sweep cost, quantizer scaling, throughput and memory.

    python -m benchmarks.bench --out results/bench

Everything is measured side by side in one run on this machine and written under ``--out``:
overhead.csv (case, model, rounds, flipbench_s, lm_eval_s, ratio: median and min-max over rounds),
overhead_rounds.csv (every round), stages.csv, sweep.csv, throughput.csv, memory.csv,
quant.csv/quant.md (from benchmarks.bench_quant), prune.csv/prune_memory.csv/prune.md (benchmarks.bench_prune),
search.csv/search.md (from benchmarks.bench_search) and bench.md; the docs' tables go to docs/measured/
(bench-overhead.md, bench-quant-memory.md here; the sub-benchmarks write their own), each with its provenance line.

Overhead compares one flipbench process (baseline and compressed evaluation, pairing, metrics, token KL,
report) with two ``lm-eval run`` processes on the same two saved model directories, tasks, limit and batch
size. ``cold`` starts from an empty baseline cache, ``cached`` repeats the run with the baseline cached. The
comparisons run interleaved (:mod:`benchmarks.overhead`), so a load change cannot fake a ratio. When the real
tier's files are present (``make real``), :mod:`benchmarks.bench_real` adds SmolLM2-135M-Instruct (real_*.csv,
threads.csv, real.md, appended to bench.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from benchmarks import overhead as interleaved
from benchmarks.overhead import timed
from benchmarks.provenance import command_line, write_fragment
from flipbench.tasks import BUNDLED_TASKS

SYNTH = BUNDLED_TASKS / "synth"


def save_pair(base_dir: Path, out: Path, bits: int) -> Path:
    """Quantize a saved model with RTN in-process and save the result: the 'checkpoint' both tools evaluate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flipbench import compress as compressors

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    compressors.compress(model, compressors.QuantConfig(method="rtn", bits=bits))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def large_random_model(out: Path, tokenizer_dir: Path, hidden: int = 1024, layers: int = 4) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=2048)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def overhead(name: str, base_dir: Path, comp_dir: Path, limit: int | None, batch: int, work: Path, rounds: int) -> list[dict]:
    """Interleaved rounds (see :mod:`benchmarks.overhead`) of flipbench cold/cached against two ``lm-eval run``."""
    flip = [sys.executable, "-m", "flipbench", "model=hf", f"model.path={base_dir}", "model.dtype=float32",
            "suite=tiny",  # a model of one's own defaults to the standard suite; this compares on the synth tasks
            f"model.name={name}", "compression=checkpoint",
            f"compression.path={comp_dir}", f"eval.batch_size={batch}"]
    flip += [f"suite.limit={limit}"] if limit else []
    lm = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--tasks", "synth", "--include_path", str(SYNTH),
          "--batch_size", str(batch), "--device", "cpu"] + (["--limit", str(limit)] if limit else [])
    # lm-eval resolves the synth YAMLs' relative data files against its working directory.
    lm_runs = [(lm + ["--model_args", f"pretrained={d},dtype=float32"], SYNTH) for d in (base_dir, comp_dir)]
    return interleaved.interleaved(name, flip, lm_runs, rounds, work)


def sweep_cost(work: Path, members: str = "2,3,4") -> dict:
    root = work / "results_sweep"
    start = time.perf_counter()
    timed([sys.executable, "-m", "flipbench", "-m", "compression=rtn", f"compression.bits={members}",
           f"output.root={root}", "output.plots=false"], work)
    seconds = time.perf_counter() - start
    manifests = [json.loads(p.read_text()) for p in (root / "sweeps").glob("*/*/manifest.json")]
    misses = sum(not m["baseline_cache_hit"] for m in manifests)
    return {"members": len(manifests), "evaluations": len(manifests) + misses, "naive_evaluations": 2 * len(manifests),
            "seconds": round(seconds, 1)}


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Achievable fp32 FLOP/s of one large matmul on this machine (the roofline for evaluation)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def throughput(run_dir: Path, peak: float) -> dict:
    """Tokens the model forwarded per second in the compressed evaluation and the FLOP/s that implies
    (2 · params · tokens); tokens counted with the model's tokenizer as lm-eval batches them (see below)."""
    from transformers import AutoConfig

    samples = pd.read_parquet(run_dir / "samples.parquet")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    cfg = json.loads((Path(manifest["compression"]["path"]) / "config.json").read_text())
    config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "transformers_version"})
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    # Characters → tokens at ~4 chars/token would be a guess; count with the model's own tokenizer instead.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(manifest["compression"]["path"])
    tokens = 0
    for _, row in samples.drop_duplicates(["task", "group", "doc_id"]).iterrows():
        n_prompt = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
        if row["output_type"] != "multiple_choice":  # the prompt's forward pass, then one step per generated token
            tokens += n_prompt + len(tok(str(row["response_comp"]), add_special_tokens=False)["input_ids"])
            continue
        lengths = [len(tok(" " + str(c), add_special_tokens=False)["input_ids"]) for c in row["choices"]]
        # lm-eval forwards context + continuation minus its last token; choices of one token share one forward
        # pass (HFLM's logits cache groups them), as MMLU's " A".." D" do
        tokens += n_prompt if all(n == 1 for n in lengths) else sum(n_prompt + n - 1 for n in lengths)
    seconds = manifest["stage_seconds"]["evaluate_compressed"]
    flops = 2 * params * tokens / seconds
    return {"params": params, "tokens": tokens, "seconds": seconds, "tokens_per_s": round(tokens / seconds, 1),
            "flop_per_s": flops, "matmul_peak_flop_per_s": peak, "share_of_peak": round(flops / peak, 4)}


def stages(run_dir: Path) -> dict:
    """Seconds per pipeline stage of one flipbench run (where its time went)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {stage: round(seconds, 2) for stage, seconds in manifest["stage_seconds"].items()}


def memory(run_dir: Path) -> list[dict]:
    """Per stage: resident MB at its start and its own peak (see flipbench.rundir.peak_memory_mb)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    method = manifest.get("compression", {}).get("method", "")
    return [{"method": method, "stage": stage, "rss_start": peak.get("rss_start"), "rss_peak": peak["rss"],
             "rss_scope": peak.get("rss_scope", "process")}
            for stage, peak in manifest.get("peak_memory_mb", {}).items()]


def markdown(tables: dict[str, pd.DataFrame]) -> str:
    from flipbench.report import markdown_table

    return "\n\n".join(f"## {name}\n\n{markdown_table(frame)}" for name, frame in tables.items()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="flipbench benchmark")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--large-limit", type=int, default=20, help="docs per task for the large random model")
    parser.add_argument("--skip-quant", action="store_true", help="skip the quantizer scaling benchmark")
    parser.add_argument("--skip-prune", action="store_true", help="skip the pruning benchmark (bench_prune)")
    parser.add_argument("--skip-large", action="store_true", help="skip the large random model (hidden 1024)")
    parser.add_argument("--skip-search", action="store_true", help="skip the budget search vs full grid benchmark")
    parser.add_argument("--skip-sequential", action="store_true", help="skip the sequential gate (bench_sequential)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each overhead comparison")
    parser.add_argument("--real", type=Path, default=Path("results/real"),
                        help="the real tier's folder (make real); its model is benchmarked when present")
    parser.add_argument("--no-fragments", action="store_true", help="write no docs/measured/ fragments")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    from benchmarks import bench_real
    from flipbench.models import resolve_path

    tiny = Path(resolve_path("bundled:tiny"))
    work = Path(tempfile.mkdtemp(prefix="flipbench-bench-"))
    try:
        print("bench: overhead on the bundled model", flush=True)
        rows = overhead("tiny", tiny, save_pair(tiny, work / "tiny_w4", 4), None, 16, work, args.rounds)
        if not args.skip_large:
            print("bench: overhead on a large random model", flush=True)
            large = large_random_model(work / "large", tiny)
            rows += overhead("large-random-h1024", large, save_pair(large, work / "large_w4", 4), args.large_limit, 16,
                             work, args.rounds)
        pd.DataFrame(rows).drop(columns=["cold_run", "cached_run"]).to_csv(args.out / "overhead_rounds.csv", index=False)
        over = pd.DataFrame(interleaved.summary(rows))
        over.to_csv(args.out / "overhead.csv", index=False)
        command = command_line("benchmarks.bench", argv)
        if not args.no_fragments:
            write_fragment("bench-overhead", command, interleaved.docs_table(interleaved.summary(rows)) +
                           f"\n\nSeconds: median (min–max) over {args.rounds} interleaved rounds; the ratio is taken "
                           "within each round.", load_at_start=load)
        print("bench: throughput, memory, sweep", flush=True)
        peak = matmul_peak()
        first = [r for r in rows if r["round"] == 0]  # stages, throughput and memory from each model's first round
        thr = pd.DataFrame([{"model": r["model"], **throughput(Path(r["cold_run"]), peak)} for r in first])
        thr.to_csv(args.out / "throughput.csv", index=False)
        mem = [{"model": r["model"], **m} for r in first for m in memory(Path(r["cold_run"]))]
        quant_mem = pd.DataFrame()
        if not args.skip_large:
            print("bench: memory of in-process quantization on the large random model", flush=True)
            from benchmarks import memory as quant_memory_bench

            qrows, qchecks = quant_memory_bench.measure(tiny, work)
            mem += qrows
            quant_mem = pd.DataFrame(qchecks)
            quant_mem.to_csv(args.out / "quant_memory.csv", index=False)
            if not args.no_fragments:
                write_fragment("bench-quant-memory", command, quant_memory_bench.docs_table(qchecks),
                               load_at_start=load)
        mem = pd.DataFrame(mem)
        mem.to_csv(args.out / "memory.csv", index=False)
        stage = pd.DataFrame([{"model": r["model"], "case": case, **stages(Path(r[f"{case}_run"]))}
                              for r in first for case in ("cold", "cached")]).fillna(0.0)
        stage.to_csv(args.out / "stages.csv", index=False)
        sweep = pd.DataFrame([sweep_cost(work)])
        sweep.to_csv(args.out / "sweep.csv", index=False)
        if not args.skip_quant:
            print("bench: quantizer scaling", flush=True)
            from benchmarks import bench_quant

            bench_quant.main(["--out", str(args.out), *(["--fragment", ""] if args.no_fragments else [])])
        if not args.skip_prune:
            print("bench: pruning (one layer; compress-stage memory at two depths)", flush=True)
            from benchmarks import bench_prune

            bench_prune.main(["--out", str(args.out), *(["--fragment", ""] if args.no_fragments else [])])
        if not args.skip_search:
            print("bench: budget search vs full grid", flush=True)
            from benchmarks import bench_search

            bench_search.main(["--out", str(args.out), *(["--fragment", ""] if args.no_fragments else [])])
        if not args.skip_sequential:
            from benchmarks import bench_sequential

            bench_sequential.main([*(["--real", str(args.real)] if bench_real.available(args.real) else []),
                                   *(["--fragment", ""] if args.no_fragments else [])])
        if bench_real.available(args.real):
            print("bench: the real model (SmolLM2-135M-Instruct)", flush=True)
            bench_real.main(["--real", str(args.real), "--out", str(args.out), "--rounds", str(args.rounds),
                             *(["--no-fragments"] if args.no_fragments else [])])
        tables = {f"Overhead (seconds; median, min-max over {args.rounds} interleaved rounds)":
                  over.drop(columns="ratio_median"), "flipbench seconds per stage": stage,
                  "Sweep cost": sweep, "Evaluation throughput": thr, "Peak memory per stage (MB)": mem}
        if not quant_mem.empty:
            tables["In-process quantization memory, compress stage (MB)"] = quant_mem
        text = markdown(tables)
        if (args.out / "real.md").exists() and bench_real.available(args.real):
            text += "\n" + (args.out / "real.md").read_text()
        (args.out / "bench.md").write_text(text)
        print((args.out / "bench.md").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
