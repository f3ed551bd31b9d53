"""Peak memory of the compress stage, measured at two depths, and the working-set formula behind it.

    python -m benchmarks.memory --out results/bench    # measure GPTQ and TACQ (part of make bench)
    python -m benchmarks.memory --formula              # the formula for Llama-3-8B and Llama-3-70B shapes

Each writes its table to docs/measured/ (``--fragment``; default memory-formula, or compress-memory-h<hidden>).

GPTQ and TACQ onload one decoder block at a time to ``compression.device``, so their working set is one
block's weights, the Hessians of one true-sequential group of its linears (cols² each in
``compression.hessian_dtype``, float64 by default: 8 bytes; SparseGPT's stay float32; plus two (cols, cols)
temporaries while the widest is factorized) and the calibration activations (inputs and
outputs of the block: 2 · n_samples · seq_len · hidden values). TACQ adds, on the CPU, its Σ|∂L/∂W|
accumulator (4 bytes per quantized weight) and the block inputs its backward sweep restarts from
(n_samples · blocks · seq_len · hidden fp32 values), and on the device one block in fp32 with its gradients
and a block-sized accumulator. The measurement runs flipbench with the model kept in CPU memory
(``model.device=cpu``) and ``compression.device=auto``: on a GPU machine ``cuda_peak_mb`` is the compress
stage's torch.cuda.max_memory_allocated, on a CPU-only one the RSS above the stage's start is the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

MB = 2**20
# The quantizers are measured at 4 bits; the pruners (sparsegpt) keep their config's bits (null: prune only).
BITS = {"gptq": ["compression.bits=4"], "tacq": ["compression.bits=4"], "rtn": ["compression.bits=4"]}
# Published shapes (config.json of meta-llama/Meta-Llama-3-8B and -70B); nothing is downloaded.
LLAMA3 = {
    "Llama-3-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256),
    "Llama-3-70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                        num_key_value_heads=8, vocab_size=128256),
}


def _groups(config) -> list[list[str]]:
    """True-sequential groups of one block, traced (layerwise.sequential_groups) on a small model of the same
    architecture: the names do not depend on the widths."""
    from transformers import AutoModelForCausalLM

    from flipbench.compress.families import decoder_layers
    from flipbench.compress.layerwise import calibration_mode, capture_inputs, sequential_groups

    small = config.__class__(**{**config.to_dict(), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "head_dim": 16})
    model = AutoModelForCausalLM.from_config(small).eval()
    with calibration_mode(model):
        inputs = capture_inputs(model, torch.zeros(1, 8, dtype=torch.long), "cpu")
        return sequential_groups(decoder_layers(model)[0], inputs)


def working_set(config, n_samples: int, seq_len: int, weight_bytes: int, act_bytes: int = 4,
                hessian_bytes: int = 8) -> dict:
    """The formula's terms in MB for one model config (see the module docstring)."""
    from flipbench.compress.families import block_linears, decoder_layers, weight_matrix
    from flipbench.models import meta_model

    model = meta_model(config)
    block = decoder_layers(model)[0]
    shapes = {name: tuple(weight_matrix(m).shape) for name, m in block_linears(block).items()}  # (out, in)
    block_params = sum(p.numel() for p in block.parameters())
    hessians = max(sum(shapes[n][1] ** 2 * hessian_bytes for n in group)
                   + 2 * max(shapes[n][1] for n in group) ** 2 * hessian_bytes
                   for group in _groups(config))
    hidden, blocks = config.hidden_size, config.num_hidden_layers
    quantized = blocks * sum(rows * cols for rows, cols in shapes.values())
    terms = {
        "block_weights_mb": block_params * weight_bytes / MB,
        "hessians_mb": hessians / MB,
        "activations_mb": 2 * n_samples * seq_len * hidden * act_bytes / MB,
        "tacq_accumulator_cpu_mb": 4 * quantized / MB,
        "tacq_block_inputs_cpu_mb": n_samples * blocks * seq_len * hidden * 4 / MB,
        "tacq_block_fp32_device_mb": 3 * block_params * 4 / MB,  # fp32 copy, its gradients, the accumulator
    }
    terms["gptq_device_mb"] = terms["block_weights_mb"] + terms["hessians_mb"] + terms["activations_mb"]
    return {k: round(v, 1) for k, v in terms.items()}


def formula_table(n_samples: int = 64, seq_len: int = 256) -> pd.DataFrame:
    """The working set for Llama-3-8B and -70B in bf16, at flipbench's default calibration size."""
    from transformers import LlamaConfig

    rows = []
    for name, dims in LLAMA3.items():
        config = LlamaConfig(**dims, max_position_embeddings=8192)
        rows.append({"model": name, "n_samples": n_samples, "seq_len": seq_len,
                     **working_set(config, n_samples, seq_len, weight_bytes=2, act_bytes=2)})
    return pd.DataFrame(rows)


def measure(tokenizer_dir: Path, work: Path, layers=(4, 8), methods=("gptq", "tacq"), n_samples: int = 16,
            seq_len: int = 256, hidden: int = 1024) -> tuple[list[dict], list[dict]]:
    """Run flipbench on random Llamas of two depths and read the compress stage's peaks from the manifests.
    Returns (per-stage rows, one summary row per depth and method, with the formula's prediction)."""
    from transformers import AutoConfig

    from benchmarks.bench import large_random_model, memory, timed

    rows, checks = [], []
    for depth in layers:
        model_dir = large_random_model(work / f"mem_l{depth}", tokenizer_dir, hidden=hidden, layers=depth)
        model_mb = (model_dir / "model.safetensors").stat().st_size / MB  # fp32: one copy of the weights
        config = AutoConfig.from_pretrained(model_dir)
        for method in methods:
            # GPTQ and TACQ hold H in compression.hessian_dtype (float64 by default); SparseGPT in float32
            predicted = working_set(config, n_samples, seq_len, weight_bytes=4,
                                    hessian_bytes=4 if method == "sparsegpt" else 8)
            root = work / f"results_mem_{method}_l{depth}"
            timed([sys.executable, "-m", "flipbench", "model=hf", f"model.path={model_dir}", "model.dtype=float32",
                   "suite=tiny",
                   "model.device=cpu", "compression.device=auto", f"model.name=mem-{method}-l{depth}",
                   f"compression={method}", *BITS.get(method, []), f"calibration.n_samples={n_samples}",
                   f"calibration.seq_len={seq_len}", "suite.limit=2", "output.plots=false", f"output.root={root}"], work)
            run = next((root / "runs").iterdir())
            manifest = json.loads((run / "manifest.json").read_text())
            stage_rows = memory(run)
            rows += [{"model": f"random-h{hidden}-l{depth}", **r} for r in stage_rows]
            peak = manifest["peak_memory_mb"]["compress"]
            tacq = method == "tacq"
            checks.append({
                "method": method, "layers": depth, "model_mb": round(model_mb, 1),
                "compress_rss_start": peak.get("rss_start"), "compress_rss_peak": peak["rss"],
                "compress_extra_mb": round(peak["rss"] - peak["rss_start"], 1), "rss_scope": peak.get("rss_scope"),
                "cuda_peak_mb": peak.get("cuda"),
                "formula_device_mb": round(predicted["gptq_device_mb"] + (predicted["tacq_block_fp32_device_mb"] if tacq else 0), 1),
                "formula_cpu_extra_mb": round(predicted["tacq_accumulator_cpu_mb"] + predicted["tacq_block_inputs_cpu_mb"], 1)
                if tacq else 0.0,
                "compress_s": round(manifest["compression"]["seconds"]["total"], 1),
            })
    return rows, checks


def docs_table(checks: list[dict]) -> str:
    """The docs' table: per method and depth, the weights, the compress stage's measured extra memory, the
    formula's device and CPU terms, and the compress seconds."""
    from benchmarks.provenance import markdown_table

    frame = pd.DataFrame(checks)
    out = pd.DataFrame({
        "method": frame["method"].str.upper().replace({"SPARSEGPT": "SparseGPT"}), "blocks": frame["layers"],
        "weights (fp32) MB": frame["model_mb"], "compress peak − start MB": frame["compress_extra_mb"],
        "formula, device MB": frame["formula_device_mb"],
        "formula, CPU MB": [f"{v:.1f}" if v else "—" for v in frame.get("formula_cpu_extra_mb", [0] * len(frame))],
        "seconds": frame["compress_s"]})
    if frame["cuda_peak_mb"].notna().any():
        out.insert(4, "CUDA peak MB", frame["cuda_peak_mb"])
    return markdown_table(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compress-stage memory: measured, and the formula")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--formula", action="store_true", help="print the formula for Llama-3-8B/70B and stop")
    parser.add_argument("--layers", type=int, nargs=2, default=(4, 8))
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--fragment", default=None, help="docs/measured/<NAME>.md ('' for none)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    from benchmarks.provenance import command_line, write_fragment
    from flipbench.report import markdown_table

    command, load = command_line("benchmarks.memory", argv), os.getloadavg()[0]
    if args.formula:
        table = markdown_table(formula_table())
        print(table)
        if args.fragment != "":
            write_fragment(args.fragment or "memory-formula", command, table)
        return 0
    from flipbench.models import resolve_path

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="flipbench-memory-"))
    try:
        rows, checks = measure(Path(resolve_path("bundled:tiny")), work, tuple(args.layers), n_samples=args.n_samples,
                               seq_len=args.seq_len, hidden=args.hidden)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pd.DataFrame(rows).to_csv(args.out / "memory_stages.csv", index=False)
    table = pd.DataFrame(checks)
    table.to_csv(args.out / "quant_memory.csv", index=False)
    print(markdown_table(table))
    if args.fragment != "":
        write_fragment(args.fragment or f"compress-memory-h{args.hidden}", command, docs_table(checks),
                       load_at_start=load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
