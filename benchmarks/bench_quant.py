"""Benchmark the quantizers on one square linear layer: seconds and relative output error vs width.

    python -m benchmarks.bench_quant --out results/bench

Writes quant.csv (method, width, bits, seconds, rel_output_error) and quant.md (the table, a log-log
least-squares fit of seconds ∝ width^k per method and bits, and the TACQ/GPTQ time ratio), and the docs' table
to docs/measured/quant-scaling.md (``--fragment``).

Setup, per width w: W (w, w) ~ N(0, 1/w); calibration activations X (tokens, w) with correlated, unevenly
scaled features, as real activations are: a power-law latent spectrum (i^-1/2), randomly mixed, with
per-feature scales from 0.1 to 10. Seconds are the median of at least --repeats runs (more, up to 50, until
they add up to 1 s), after one untimed warm-up run, on --threads torch threads (default 1: the per-column
updates are latency-bound, and extra threads on a shared machine only add noise).
rel_output_error = ||XWᵀ − XQᵀ||_F / ||XWᵀ||_F on X.
Timed: rtn = the rounding; gptq = accumulating H with add_batch + solve; tacq = gptq's H + the gradients +
a first solve + saliency + top-k + the masked solve (H is shared: one layer sees the same inputs in both
passes, and the second solve reuses the first one's factorization of H). TACQ's gradient on one layer: the
loss is the MSE to a noisy target Y = XW₀ᵀ + ε, summed as |∂L/∂W| over 256-token chunks (batch 1). Y is
the task data (the labels, in a model), drawn before timing starts. The MSE to the original output itself
would have a zero gradient at W₀; the noise stands in for a task loss the layer does not fit exactly.
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.provenance import add_fragment_option, command_line, write_fragment
from flipbench.compress.quant.gptq import GPTQ, GPTQSettings
from flipbench.compress.quant.grid import GridSpec, rtn
from flipbench.compress.quant.tacq import n_to_keep, saliency, top_k_masks

WIDTHS = (256, 512, 1024, 2048)
BITS = (3, 4)
TOKENS = 4096
CHUNK = 256
KEEP_FRACTION = 0.0035
MIN_TOTAL_S, MAX_RUNS = 1.0, 50


def layer_and_inputs(width: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(width, width, generator=g) / width**0.5  # (out, in)
    mixing = torch.randn(width, width, generator=g) / width**0.5
    latent = torch.randn(tokens, width, generator=g) / torch.arange(1, width + 1) ** 0.5  # power-law spectrum
    X = latent @ mixing * torch.logspace(-1, 1, width)  # (tokens, in)
    return W, X


def hessian(X: torch.Tensor) -> GPTQ:
    solver = GPTQ(X.shape[1])
    for chunk in X.split(CHUNK):
        solver.add_batch(chunk)
    return solver


def task_targets(W: torch.Tensor, X: torch.Tensor, seed: int) -> torch.Tensor:
    """Y = XW₀ᵀ + ε, ε at 10% of the output's scale: what TACQ's stand-in task loss fits."""
    g = torch.Generator().manual_seed(seed)
    Y = X @ W.t()
    return Y + 0.1 * Y.std() * torch.randn(Y.shape, generator=g)


def gradient_magnitude(W: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Σ_chunks |∂L/∂W| with L = mean (XWᵀ − Y)² (see the module docstring)."""
    G = torch.zeros_like(W)
    W = W.clone().requires_grad_(True)
    for Xb, Yb in zip(X.split(CHUNK), Y.split(CHUNK)):
        (grad,) = torch.autograd.grad((Xb @ W.t() - Yb).pow(2).mean(), W)
        G += grad.abs()
    return G


def run_method(method: str, W: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, bits: int) -> torch.Tensor:
    settings = GPTQSettings(grid=GridSpec(bits=bits))
    if method == "rtn":
        return rtn(W, settings.grid)
    solver = hessian(X)
    if method == "gptq":
        return solver.solve(W, settings)[0]
    G = gradient_magnitude(W, X, Y)
    S = saliency(W, G, solver.solve(W, settings)[0])
    keep = top_k_masks({"W": S}, n_to_keep(KEEP_FRACTION, W.numel()))["W"]
    return solver.solve(W, settings, keep)[0]


def measure(widths, bits_list, tokens: int, seed: int, repeats: int) -> list[dict]:
    rows = []
    for width in widths:
        W, X = layer_and_inputs(width, tokens, seed)
        Y = task_targets(W, X, seed)
        reference = X @ W.t()
        for bits in bits_list:
            for method in ("rtn", "gptq", "tacq"):
                run_method(method, W, X, Y, bits)  # warm-up: first-call allocations and kernel set-up
                times = []
                # at least `repeats` runs and MIN_TOTAL_S in all: milliseconds-long runs need many to be stable
                while len(times) < repeats or (sum(times) < MIN_TOTAL_S and len(times) < MAX_RUNS):
                    start = time.perf_counter()
                    Q = run_method(method, W, X, Y, bits)
                    times.append(time.perf_counter() - start)
                seconds = float(np.median(times))
                error = ((reference - X @ Q.t()).norm() / reference.norm()).item()
                rows.append(dict(method=method, width=width, bits=bits, seconds=seconds, rel_output_error=error))
    return rows


def scaling_exponent(rows: list[dict]) -> float:
    """k in seconds ∝ width^k: least squares on log seconds vs log width."""
    width = np.log([r["width"] for r in rows])
    seconds = np.log([r["seconds"] for r in rows])
    return float(np.polyfit(width, seconds, 1)[0])


def markdown(rows: list[dict], tokens: int, threads: int, repeats: int) -> str:
    lines = [
        "# Quantizer benchmark: one square linear layer",
        "",
        f"{tokens} calibration tokens, {threads} torch thread(s), median of at least {repeats} runs (1 s in all), "
        f"per-channel asymmetric grid, TACQ keep_fraction {KEEP_FRACTION}. rel_output_error = ||XWᵀ − XQᵀ||_F / ||XWᵀ||_F.",
        "",
        "| method | width | bits | seconds | rel_output_error |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['method']} | {r['width']} | {r['bits']} | {r['seconds']:.3f} | {r['rel_output_error']:.4f} |"
        for r in rows
    ]
    lines += ["", "## Time scaling: seconds ∝ width^k (log-log least squares)", ""]
    lines += ["| method | bits | k |", "|---|---:|---:|"]
    for method in ("rtn", "gptq", "tacq"):
        for bits in sorted({r["bits"] for r in rows}):
            exponent = scaling_exponent([r for r in rows if r["method"] == method and r["bits"] == bits])
            lines.append(f"| {method} | {bits} | {exponent:.2f} |")
    lines += ["", "## TACQ / GPTQ time ratio", "", "| width | bits | ratio |", "|---:|---:|---:|"]
    seconds = {(r["method"], r["width"], r["bits"]): r["seconds"] for r in rows}
    for method, width, bits in sorted(k for k in seconds if k[0] == "tacq"):
        lines.append(f"| {width} | {bits} | {seconds[method, width, bits] / seconds['gptq', width, bits]:.2f} |")
    return "\n".join(lines) + "\n"


def docs_table(rows: list[dict], tokens: int, repeats: int) -> str:
    """Per width: relative output error of every method at each bit width, GPTQ's and TACQ's seconds at the lowest
    bit width; the fitted exponents and the TACQ/GPTQ time ratio under it."""
    bits = sorted({r["bits"] for r in rows})
    by = {(r["method"], r["width"], r["bits"]): r for r in rows}
    low = bits[0]
    lines = ["| width | " + " | ".join(f"rel. output error {b}-bit RTN / GPTQ / TACQ" for b in bits)
             + f" | GPTQ s ({low}-bit) | TACQ s ({low}-bit) |", "|---:|" + "---|" * len(bits) + "---:|---:|"]
    for width in sorted({r["width"] for r in rows}):
        errors = [" / ".join(f"{by[m, width, b]['rel_output_error']:.3f}" for m in ("rtn", "gptq", "tacq")) for b in bits]
        lines.append(f"| {width} | " + " | ".join(errors) + f" | {by['gptq', width, low]['seconds']:.3g} | "
                     f"{by['tacq', width, low]['seconds']:.3g} |")
    exps = {m: [scaling_exponent([r for r in rows if r["method"] == m and r["bits"] == b]) for b in bits]
            for m in ("gptq", "tacq")}
    ratios = [by["tacq", w, b]["seconds"] / by["gptq", w, b]["seconds"] for (m, w, b) in by if m == "tacq"]
    return "\n".join(lines) + (
        f"\n\n{tokens} calibration tokens, median of at least {repeats} runs after a warm-up. Fitted seconds ∝ width^k: "
        f"k = {min(exps['gptq']):.2f}–{max(exps['gptq']):.2f} for GPTQ, {min(exps['tacq']):.2f}–{max(exps['tacq']):.2f} "
        f"for TACQ; TACQ / GPTQ time {min(ratios):.1f}–{max(ratios):.1f}×.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    parser.add_argument("--bits", type=int, nargs="+", default=list(BITS))
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    add_fragment_option(parser, "quant-scaling")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rows = measure(args.widths, args.bits, args.tokens, args.seed, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "quant.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "width", "bits", "seconds", "rel_output_error"])
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "quant.md").write_text(markdown(rows, args.tokens, args.threads, args.repeats))
    if args.fragment:
        write_fragment(args.fragment, command_line("benchmarks.bench_quant", argv),
                       docs_table(rows, args.tokens, args.repeats), load_at_start=load)


if __name__ == "__main__":
    main()
