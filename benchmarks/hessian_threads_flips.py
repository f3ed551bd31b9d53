"""docs/compression-noise.md's float32 check: with ``compression.hessian_dtype=float32`` GPTQ's weights follow the
thread count; how far does that move the flips?

    python -m benchmarks.hessian_threads_flips [--work DIR]

Runs 2-bit GPTQ on the bundled tiny model twice with float32 Hessians, each in its own process with
``OMP_NUM_THREADS=1`` and ``=2`` (everything else as ``python -m benchmarks.bundled --only replicas`` runs its single
runs), and writes the flips per task of both to ``docs/measured/hessian-threads-flips.md``. This is a benchmark, not
a test.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.bundled import flipbench, headline, pct
from benchmarks.provenance import add_fragment_option, markdown_table, publish


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    add_fragment_option(parser, "hessian-threads-flips")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="flipbench-hessian-"))
    gptq = ["compression=gptq", "compression.bits=2", "compression.hessian_dtype=float32"]
    load, start = os.getloadavg()[0], time.perf_counter()
    runs = {n: headline(flipbench(work, f"gptq-f32-{n}-threads", gptq, env={"OMP_NUM_THREADS": str(n)}))
            for n in (1, 2)}
    one, two = runs[1], runs[2]
    table = pd.DataFrame({"task": one["task"], "flips, 1 thread": one["flips"].map(pct),
                          "flips, 2 threads": two["flips"].map(pct),
                          "difference (points)": [f"{100 * abs(a - b):.1f}" for a, b in zip(one["flips"], two["flips"])]})
    body = ("GPTQ 2-bit on the bundled model with `compression.hessian_dtype=float32` (float32 Hessian sums), one "
            "single run per thread count, each in its own process (`OMP_NUM_THREADS`); flips on each task's headline "
            "row:\n\n" + markdown_table(table) + f"\n\n{time.perf_counter() - start:.0f} s wall.")
    publish(args.fragment, "benchmarks.hessian_threads_flips", argv, body, load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
