"""The sequential gate against the full run: docs used, wall time and verdicts for a passing (RTN 8-bit) and a
failing (RTN 2-bit) member, each with and without ``gate.sequential=true``.

    python -m benchmarks.bench_sequential [--real results/real] [--skip-tiny] [--mmlu-docs 40 ...] [--fragment NAME]

The bundled tier runs ``make eval``'s default suite on the bundled model; ``--real`` (the folder ``make real``
fills) adds SmolLM2-135M-Instruct on a larger slice of the real tier's data than ``make real`` takes, so a task has
several looks. Each configuration is one ``python -m flipbench`` process; runs of a tier share one baseline cache
(the tier's first run evaluates the baseline, and its run wall includes that). Writes docs/measured/sequential.md
(bundled tier) and docs/measured/sequential_real.md (real tier), each with the command that wrote it
(``--fragment NAME``: NAME.md and NAME_real.md; '' for none, e.g. a smoke run on a tiny slice).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import real, real_setup
from benchmarks.provenance import add_fragment_option, command_line, write_fragment

MEMBERS = ((8, "pass expected"), (2, "fail expected"))


def _docs(run_dir: Path) -> dict[str, int]:
    import pandas as pd

    samples = pd.read_parquet(run_dir / "samples.parquet")
    return samples.drop_duplicates(["task", "group", "doc_id"]).groupby("task").size().to_dict()


def run_tier(name: str, overrides: list[str], limit: str, work: Path, env: dict) -> list[dict]:
    """Both members, full then sequential, under one output root; a row per run."""
    rows = []
    for bits, _ in MEMBERS:
        for mode in ("full", "sequential"):
            run_dir = work / f"{name}-{bits}bit-{mode}"
            cmd = [sys.executable, "-m", "flipbench", *overrides, "compression=rtn", f"compression.bits={bits}",
                   *limit.split(), f"output.root={work / 'results'}", f"output.run_dir={run_dir}"]
            cmd += ["gate.sequential=true"] if mode == "sequential" else []
            start = time.perf_counter()
            done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            wall = time.perf_counter() - start
            if done.returncode not in (0, 3):  # 3: the gate failed, as the 2-bit member should
                raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
            manifest = json.loads((run_dir / "manifest.json").read_text())
            used = _docs(run_dir)
            seq = manifest.get("sequential") or {}
            available = {t: seq[t]["available"] for t in used if t in seq} if seq else used
            rows.append({"tier": name, "bits": bits, "mode": mode, "verdict": manifest["gate"]["verdict"],
                         "docs": {t: used.get(t, 0) for t in sorted(available)}, "available": available,
                         "decisions": {t: seq[t]["decision"] for t in sorted(available)} if seq else {},
                         "evaluate_s": manifest["stage_seconds"].get("evaluate_compressed", float("nan")),
                         "baseline_s": manifest["stage_seconds"].get("evaluate_baseline", 0.0), "wall_s": wall})
            print(f"bench_sequential: {name} {bits}-bit {mode}: {rows[-1]['verdict']} on "
                  f"{sum(used.values())} of {sum(available.values())} docs, {wall:.1f} s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| member | mode | docs used / available (per task) | total | verdict | same verdict as full | "
             "compressed side (s) | run wall (s) |", "|---|---|---|---|---|---|---|---|"]
    full = {r["bits"]: r["verdict"] for r in rows if r["mode"] == "full"}
    for r in rows:
        per_task = ", ".join(f"{t} {r['docs'][t]}/{r['available'][t]}" for t in r["docs"])
        total = f"{sum(r['docs'].values())}/{sum(r['available'].values())}"
        same = "yes" if r["verdict"] == full[r["bits"]] else "**no**"
        lines.append(f"| RTN {r['bits']}-bit | {r['mode']} | {per_task} | {total} | {r['verdict']} | "
                     f"{same if r['mode'] == 'sequential' else '—'} | {r['evaluate_s']:.1f} | {r['wall_s']:.1f}"
                     f"{' (incl. baseline)' if r['baseline_s'] > 1 and r['mode'] == 'full' and r['bits'] == 8 else ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=None, help="the real tier's folder (make real); off when unset")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--limit", default="gate.max_flips=0.05", help="the gate's limits, as overrides")
    real.add_slice_arguments(parser, subjects=6, arc=200, hellaswag=200, winogrande=200)
    parser.set_defaults(mmlu_docs=40)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    add_fragment_option(parser, "sequential")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    command = command_line("benchmarks.bench_sequential", argv)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    work = args.keep or Path(tempfile.mkdtemp(prefix="flipbench-seq-"))
    note = (f"Gate: `{args.limit}`, `gate.alpha=0.05`, default chunk (10% of a task's docs, at least 50); one "
            "process per row, in the order listed, sharing the baseline cache.")
    try:
        if not args.skip_tiny:
            rows = run_tier("tiny", [], args.limit, work / "tiny", env)
            body = [note, "", "**Bundled model, `make eval`'s suite**", "", table(rows)]
            print(write_fragment(args.fragment, command, "\n".join(body)).read_text() if args.fragment else "\n".join(body))
        if args.real is not None:
            model = (args.real / "smollm2-135m").resolve()
            data = real_setup.data_root((args.real / "pkgs").resolve())
            mmlu = real.mmlu_subset(data, work / "mmlu_subset", args.subjects)
            overrides = ["model=hf", f"model.path={model}", "model.name=smollm2-135m", "model.dtype=float32",
                         f"eval.batch_size={args.batch_size}", *real.suite_overrides(data, mmlu, args)]
            rows = run_tier("real", overrides, args.limit, work / "real", env)
            body = [note, "", f"**SmolLM2-135M-Instruct, real data** (MMLU {args.subjects} subjects x {args.mmlu_docs} "
                    f"5-shot, ARC-Challenge {args.arc_docs}, HellaSwag {args.hellaswag_docs}, Winogrande "
                    f"{args.winogrande_docs} docs)", "", table(rows)]
            print(write_fragment(f"{args.fragment}_real", command, "\n".join(body)).read_text() if args.fragment
                  else "\n".join(body))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
