"""Pruning on one linear layer: relative output error and seconds per method, width and pattern, SparseGPT's
time against GPTQ's on the same layer, and the compress stage's memory at two model depths.

    python -m benchmarks.bench_prune --out results/bench

Layer: W (width, width) ~ N(0, 1/width), inputs X (tokens, width) with a power-law spectrum, correlated
features and scales spread over 10⁻¹..10¹ (benchmarks.bench_quant.layer_and_inputs), the feature order shuffled
(real activations are not sorted by size; SparseGPT's per-block sparsity budget assumes each block mixes them).
Error = ||XWᵀ − XŴᵀ||² / ||XWᵀ||². Seconds include collecting the statistics (H for SparseGPT and GPTQ,
||X_j||² for Wanda) from X in chunks, as the layer-by-layer runner does; one torch thread.
Writes prune.csv, prune_memory.csv and prune.md; --memory-layers/--memory-hidden/--n-samples/--seq-len size the
memory part (full flipbench runs of SparseGPT on random Llamas, benchmarks.memory.measure). The docs' tables go to
docs/measured/<--fragment>.md (default prune-layer) and, with the memory part, <--fragment>-memory-h<hidden>.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from benchmarks.bench_quant import CHUNK, layer_and_inputs
from benchmarks.provenance import add_fragment_option, command_line, write_fragment
from flipbench.compress.hessian import ColumnNorms
from flipbench.compress.prune.masks import Pattern, mask_for
from flipbench.compress.prune.sparsegpt import SparseGPT, SparseGPTSettings
from flipbench.compress.prune.wanda import wanda_scores
from flipbench.compress.quant.gptq import GPTQ, GPTQSettings
from flipbench.compress.quant.grid import GridSpec

PATTERNS = {"50%": Pattern(), "2:4": Pattern(2, 4)}


def collected(kind, X: torch.Tensor):
    collector = kind(X.shape[1])
    for chunk in X.split(CHUNK):
        collector.add_batch(chunk)
    return collector


def prune_layer(method: str, W: torch.Tensor, X: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    if method == "magnitude":
        return W.masked_fill(mask_for(W.abs(), 0.5, pattern), 0)
    if method == "wanda":
        return W.masked_fill(mask_for(wanda_scores(W, collected(ColumnNorms, X).sq_norms), 0.5, pattern), 0)
    if method == "sparsegpt":
        return collected(SparseGPT, X).solve(W, SparseGPTSettings(0.5, pattern))[0]
    return collected(GPTQ, X).solve(W, GPTQSettings(grid=GridSpec(bits=4)))[0]  # gptq: 4-bit, per channel


def layer_rows(widths: list[int], tokens: int, seed: int) -> list[dict]:
    rows = []
    for width in widths:
        W, X = layer_and_inputs(width, tokens, seed)
        X = X[:, torch.randperm(width, generator=torch.Generator().manual_seed(seed))]
        reference = (X @ W.t()).pow(2).sum().item()
        cases = [(m, p) for m in ("magnitude", "wanda", "sparsegpt") for p in PATTERNS] + [("gptq", "w4")]
        for method, pattern in cases:
            start = time.perf_counter()
            W_hat = prune_layer(method, W, X, PATTERNS.get(pattern, Pattern()))
            seconds = time.perf_counter() - start
            error = (X @ W.t() - X @ W_hat.t()).pow(2).sum().item() / reference
            rows.append({"width": width, "method": method, "pattern": pattern, "rel_error": error, "seconds": seconds})
    return rows


def markdown(rows: pd.DataFrame, memory: pd.DataFrame, tokens: int) -> str:
    from flipbench.report import markdown_table

    error = rows.pivot_table(index="width", columns=["method", "pattern"], values="rel_error")
    seconds = rows.pivot_table(index="width", columns=["method", "pattern"], values="seconds")
    ratio = (seconds[("sparsegpt", "50%")] / seconds[("gptq", "w4")]).rename("sparsegpt 50% / gptq w4 time")
    flat = lambda frame: frame.set_axis([" ".join(c) for c in frame.columns], axis=1).reset_index()  # noqa: E731
    parts = [f"Pruning one layer, {tokens} calibration tokens, one torch thread.",
             "## Relative output error", markdown_table(flat(error.map(lambda v: f"{v:.4f}"))),
             "## Seconds", markdown_table(flat(seconds.map(lambda v: f"{v:.3f}"))),
             "## SparseGPT against GPTQ (same layer, same Hessian)", markdown_table(ratio.round(2).reset_index())]
    if not memory.empty:
        parts += ["## Compress stage memory (MB)", markdown_table(memory)]
    return "\n\n".join(parts) + "\n"


COLUMNS = [(m, p) for p in PATTERNS for m in ("magnitude", "wanda", "sparsegpt")]
NAMES = {"magnitude": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT", "gptq": "GPTQ"}


def docs_tables(rows: pd.DataFrame, tokens: int) -> str:
    """The docs' two tables: relative output error per method and pattern (GPTQ w4 beside), and seconds with
    SparseGPT 50% / GPTQ."""
    from flipbench.report import markdown_table

    error = rows.pivot_table(index="width", columns=["method", "pattern"], values="rel_error")
    seconds = rows.pivot_table(index="width", columns=["method", "pattern"], values="seconds")
    first = pd.DataFrame({"width": error.index})
    for m, p in [*COLUMNS, ("gptq", "w4")]:
        first[f"{NAMES[m]} {p}" if m != "gptq" else "GPTQ w4"] = [f"{v:.4f}" for v in error[(m, p)]]
    second = pd.DataFrame({"width": seconds.index, "SparseGPT 50% s": seconds[("sparsegpt", "50%")].round(2).to_numpy(),
                           "SparseGPT 2:4 s": seconds[("sparsegpt", "2:4")].round(2).to_numpy(),
                           "GPTQ w4 s": seconds[("gptq", "w4")].round(2).to_numpy(),
                           "SparseGPT 50% / GPTQ": (seconds[("sparsegpt", "50%")] / seconds[("gptq", "w4")]).round(1).to_numpy()})
    return (f"Relative output error ‖XWᵀ − XŴᵀ‖² / ‖XWᵀ‖², {tokens} calibration tokens:\n\n{markdown_table(first)}\n\n"
            f"Seconds (statistics included), one torch thread, one run per cell:\n\n{markdown_table(second)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="pruning benchmark")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--widths", default="256,512,1024,2048")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-memory", action="store_true", help="skip the compress-stage memory at two depths")
    parser.add_argument("--memory-layers", type=int, nargs=2, default=(2, 4), help="the two depths")
    parser.add_argument("--memory-hidden", type=int, default=1024, help="hidden size of the random Llamas")
    parser.add_argument("--n-samples", type=int, default=16, help="calibration samples for the memory runs")
    parser.add_argument("--seq-len", type=int, default=256, help="calibration sequence length for the memory runs")
    add_fragment_option(parser, "prune-layer")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    rows = pd.DataFrame(layer_rows([int(w) for w in args.widths.split(",")], args.tokens, args.seed))
    rows.to_csv(args.out / "prune.csv", index=False)
    memory = pd.DataFrame()
    if not args.skip_memory:
        import tempfile

        from benchmarks.memory import measure
        from flipbench.models import resolve_path

        with tempfile.TemporaryDirectory() as tmp:
            tokenizer_dir = Path(resolve_path("bundled:tiny"))
            _, checks = measure(tokenizer_dir, Path(tmp), layers=tuple(args.memory_layers), methods=("sparsegpt",),
                                n_samples=args.n_samples, seq_len=args.seq_len, hidden=args.memory_hidden)
        memory = pd.DataFrame(checks).drop(columns=["formula_cpu_extra_mb"])  # TACQ's CPU terms: 0 here
        memory.to_csv(args.out / "prune_memory.csv", index=False)
    (args.out / "prune.md").write_text(markdown(rows, memory, args.tokens))
    if args.fragment:
        from benchmarks.memory import docs_table

        command = command_line("benchmarks.bench_prune", argv)
        write_fragment(args.fragment, command, docs_tables(rows, args.tokens), load_at_start=load)
        if not memory.empty:
            write_fragment(f"{args.fragment}-memory-h{args.memory_hidden}", command,
                           docs_table(memory.to_dict("records")), load_at_start=load)
    print((args.out / "prune.md").read_text())


if __name__ == "__main__":
    main()
