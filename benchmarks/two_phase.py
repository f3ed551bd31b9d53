"""docs/scale-out.md's worked example: the bundled model collected in two shards per side (two processes), paired
by ``flipbench compare``, against the same comparison made in one process.

    python -m benchmarks.two_phase [--out results/two_phase]

Runs, each timed as a whole process: ``flipbench collect -m side=baseline shard=0/2,1/2
hydra/launcher=local_parallel``, the same for ``side=compressed`` (with the baseline's artifact, for token KL),
``flipbench compare`` on the two artifacts, and ``flipbench eval.cache=false`` in one process. Writes the compare
run's headline rows, which ``summary.csv`` columns differ from the one-process run's (and by how much, relative,
for the continuous ones) and the seconds to ``docs/measured/two-phase.md``. This is a benchmark, not a test
(``tests/test_two_phase.py`` pins the equality at batch size 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.overhead import timed
from benchmarks.provenance import ROOT, add_fragment_option, markdown_table, publish


def flipbench(args: list[str], root: Path) -> float:
    return timed([sys.executable, "-m", "flipbench", *args, f"output.root={root}", "output.plots=false"], cwd=ROOT)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def headline_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = summary[(summary["group"] == "all") & summary["headline"]]
    metric = [m if f == "none" else f"{m} ({f})" for m, f in zip(rows["metric"], rows["filter"])]
    return pd.DataFrame({
        "task": rows["task"], "metric": metric, "n": rows["n"].astype(int), "acc_base": rows["acc_base"].map(_pct),
        "acc_comp": rows["acc_comp"].map(_pct), "flips": rows["flips"].map(_pct), "lost": rows["lost"].map(_pct),
        "gained": rows["gained"].map(_pct), "label loyalty": rows["label_loyalty"].map(_pct),
        "KL mean (nats)": [f"{k:.4f}" + (" (token)" if s == "token" else "")
                           for k, s in zip(rows["kl_mean"], rows.get("kl_scope", [""] * len(rows)))]})


def differences(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, float]:
    """Per column whose values differ (rows matched on task, group, metric, filter; NaN equals NaN): the largest
    relative difference for numbers (inf where a value differs from zero), NaN for text."""
    key = ["task", "group", "metric", "filter"]
    a, b = a.set_index(key).sort_index(), b.set_index(key).sort_index()
    out = {}
    for column in (c for c in a.columns if c in b.columns and not a[c].equals(b[c])):
        x, y = pd.to_numeric(a[column], errors="coerce"), pd.to_numeric(b[column], errors="coerce")
        if x.notna().any() and (x.isna() == a[column].isna()).all():
            scale = np.maximum(np.abs(x), np.abs(y)).replace(0, np.nan)
            out[column] = float(((x - y).abs() / scale).max())
        else:
            out[column] = float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/two_phase"))
    add_fragment_option(parser, "two-phase")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    base, comp = out / "artifacts/tiny-base", out / "artifacts/tiny-rtn-w4"
    shards = ["shard=0/2,1/2", "hydra/launcher=local_parallel"]
    load, start = os.getloadavg()[0], time.perf_counter()
    seconds = {
        "baseline, two shards at once": flipbench(["collect", "-m", "side=baseline", *shards,
                                                   f"output.artifact={base}"], out),
        "compressed, two shards at once": flipbench(["collect", "-m", "side=compressed", *shards,
                                                     f"output.artifact={comp}", f"output.baseline_artifact={base}"], out),
        "compare": flipbench(["compare", str(base), str(comp), f"output.run_dir={out / 'runs/compare'}"], out),
        "one process": flipbench(["eval.cache=false", f"output.run_dir={out / 'runs/one-process'}"], out)}
    manifest = json.loads((out / "runs/compare/manifest.json").read_text())
    stages = manifest.get("stage_seconds", {})
    compared = pd.read_csv(out / "runs/compare/summary.csv")
    differ = differences(compared, pd.read_csv(out / "runs/one-process/summary.csv"))
    diff_text = "; ".join(f"`{c}`" + (f" (largest relative difference {d:.2g})" if np.isfinite(d) else "")
                          for c, d in differ.items()) or "none"
    timing = "; ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
    stage_text = ", ".join(f"{k} {v:.2f} s" for k, v in stages.items())
    body = ("`flipbench compare` on two artifacts, each collected in two shards in two processes (bundled tiny model "
            "vs its RTN w4 copy, synthetic suite), headline rows of its `summary.csv`:\n\n"
            + markdown_table(headline_table(compared))
            + f"\n\nColumns of `summary.csv` that differ from the one-process run's (`flipbench eval.cache=false`): "
            f"{diff_text}.\n\nWall seconds per command: {timing} (compare's stages: {stage_text}); "
            f"{time.perf_counter() - start:.0f} s in all.")
    publish(args.fragment, "benchmarks.two_phase", argv, body, load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
