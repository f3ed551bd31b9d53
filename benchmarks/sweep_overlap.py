"""docs/benchmarks.md's sweep measurement: do the members of a sweep flip the same docs, and does mean KL rank
them like flips?

    python -m benchmarks.sweep_overlap [--limit 50] [--out results/sweep_overlap]

Runs ``flipbench -m compression=rtn,gptq compression.bits=2,3 suite.limit=N`` on the bundled tiny model and
synthetic tasks (what ``make sweep METHODS=rtn,gptq BITS=2,3 LIMIT=N`` runs) and writes the sweep's own
``sweep_overlap.csv`` (per task and member pair: flips, shared flips, Jaccard, exact McNemar p, Holm-adjusted) and
``sweep_correlation.csv`` (per task: Spearman's rho between mean KL and flips with its interval) to
``docs/measured/sweep-overlap.md``. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.overhead import timed
from benchmarks.provenance import ROOT, add_fragment_option, markdown_table, publish


def _num(x: float, fmt: str) -> str:
    return "n/a" if not np.isfinite(x) else format(x, fmt)


def overlap_table(pairs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "task": pairs["task"], "pair": pairs["member_a"] + " vs " + pairs["member_b"], "docs": pairs["n"],
        "flips a / b": [f"{a} / {b}" for a, b in zip(pairs["flips_a"], pairs["flips_b"])],
        "flipped by both": pairs["flips_both"], "Jaccard": pairs["jaccard"].map(lambda x: _num(x, ".2f")),
        "a right b wrong / a wrong b right": [f"{a} / {b}" for a, b in zip(pairs["a_right_b_wrong"],
                                                                           pairs["a_wrong_b_right"])],
        "McNemar p": pairs["mcnemar_p"].map(lambda x: _num(x, ".2g")),
        "Holm-adjusted": pairs["mcnemar_p_holm"].map(lambda x: _num(x, ".2g"))})


def correlation_table(corr: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "task": corr["task"], "members": corr["members"], "Spearman rho (KL mean vs flips)":
            corr["spearman_kl_flips"].map(lambda x: _num(x, ".2f")),
        "95% interval": [f"{_num(lo, '.2f')} to {_num(hi, '.2f')}" for lo, hi in
                         zip(corr["spearman_ci_low"], corr["spearman_ci_high"])],
        "p": corr["spearman_p"].map(lambda x: _num(x, ".3g"))})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=50, help="docs per task (suite.limit)")
    parser.add_argument("--out", type=Path, default=Path("results/sweep_overlap"))
    add_fragment_option(parser, "sweep-overlap")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    load, start = os.getloadavg()[0], time.perf_counter()
    timed([sys.executable, "-m", "flipbench", "-m", "compression=rtn,gptq", "compression.bits=2,3",
           f"suite.limit={args.limit}", "output.plots=false", f"output.root={out}"], cwd=ROOT)
    sweep = next((out / "sweeps").iterdir())
    pairs = pd.read_csv(sweep / "sweep_overlap.csv")
    corr = pd.read_csv(sweep / "sweep_correlation.csv")
    significant = int((pairs["mcnemar_p"] < 0.05).sum())
    body = (f"`make sweep METHODS=rtn,gptq BITS=2,3 LIMIT={args.limit}` (bundled tiny model, the first {args.limit} "
            "docs of each synthetic task, four members), the sweep's `sweep_overlap.csv`: per task and member pair "
            "the flipped docs of each, those both flipped, their Jaccard overlap, the discordant docs and the exact "
            "McNemar p (unadjusted, then Holm-adjusted over the task's pairs).\n\n"
            + markdown_table(overlap_table(pairs))
            + f"\n\n{significant} of {len(pairs)} pairs differ at unadjusted p < 0.05, "
            f"{int((pairs['mcnemar_p_holm'] < 0.05).sum())} after Holm's adjustment. `sweep_correlation.csv`, "
            "Spearman's rho between the members' mean KL and flips (Fisher-z interval; n/a at |rho| = 1 or below 4 "
            "members):\n\n" + markdown_table(correlation_table(corr))
            + f"\n\n{time.perf_counter() - start:.0f} s wall.")
    publish(args.fragment, "benchmarks.sweep_overlap", argv, body, load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
