"""docs/benchmarks.md's ragged-group check on a real checkpoint: RTN w4 with groups of 128 on a model whose
576-wide rows 128 does not divide (SmolLM2-135M), on the bundled synth_mmlu.

    python -m benchmarks.ragged_real --model results/real/smollm2-135m [--limit 40 --group-size 128]

Runs what ``make eval MODEL=<model> METHOD=rtn BITS=4 TASKS=synth_mmlu LIMIT=40 ARGS="suite=tiny
compression.group_size=128"`` runs and writes the compression the manifest records (linears, blocks, avg_bits,
model bytes, compress seconds) and the headline row of ``summary.csv`` to ``docs/measured/ragged-real.md``.
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from benchmarks.overhead import timed
from benchmarks.provenance import ROOT, add_fragment_option, markdown_table, publish


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a transformers model folder (make real writes "
                                                                  "results/real/smollm2-135m)")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("results/ragged_real"))
    add_fragment_option(parser, "ragged-real")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        parser.exit(2, f"ragged_real: --model {args.model} holds no config.json; pass a transformers model folder\n")
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    run_dir = out / "run"
    load = os.getloadavg()[0]
    wall = timed([sys.executable, "-m", "flipbench", "model=hf", f"model.path={args.model.resolve()}", "suite=tiny",
                  "compression=rtn", "compression.bits=4", f"compression.group_size={args.group_size}",
                  "suite.tasks=[synth_mmlu]", f"suite.limit={args.limit}", "output.plots=false",
                  f"output.root={out}", f"output.run_dir={run_dir}"], cwd=ROOT)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    comp = manifest["compression"]
    summary = pd.read_csv(run_dir / "summary.csv")
    r = summary[(summary["group"] == "all") & summary["headline"]].iloc[0]
    config = json.loads((args.model / "config.json").read_text())
    table = pd.DataFrame([{
        "model": f"hidden {config.get('hidden_size')}, MLP {config.get('intermediate_size')}",
        "linears quantized": f"{comp['layers_quantized']} in {comp['decoder_layers']} blocks",
        "group size": comp["group_size"], "avg_bits": f"{comp['avg_bits']:.4f}",
        "model MB": f"{comp['model_bytes'] / 1e6:.1f}", "docs": int(r["n"]),
        "acc base / comp": f"{100 * r['acc_base']:.1f}% / {100 * r['acc_comp']:.1f}%",
        "flips": f"{100 * r['flips']:.1f}%", "choice KL mean (nats)": f"{r['kl_mean']:.3f}",
        "compress s": f"{manifest['stage_seconds']['compress']:.0f}"}])
    body = (f"RTN w4, `compression.group_size={args.group_size}`, on synth_mmlu (the first {args.limit} docs; "
            "`suite=tiny`):\n\n" + markdown_table(table) + f"\n\n{wall:.0f} s wall for the run.")
    publish(args.fragment, "benchmarks.ragged_real", argv, body, load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
