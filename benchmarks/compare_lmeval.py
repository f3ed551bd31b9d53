"""docs/compare-existing.md's worked example: two plain lm-eval logs paired by ``flipbench compare``, checked
against the same comparison made in one flipbench process.

    python -m benchmarks.compare_lmeval [--out results/compare_lmeval]

Saves a 3-bit RTN copy of the bundled tiny model as a plain checkpoint, runs the ``lm_eval`` CLI on the bundled
synthetic tasks for the model and the copy (batch size 16, ``--log_samples``), ``flipbench compare`` on the two
output folders, and ``flipbench compression=rtn compression.bits=3 eval.token_kl=false`` in one process. Writes
the compare run's summary (every filter and metric row) and which ``summary.csv`` columns differ between the two
runs to ``docs/measured/compare-lmeval.md``. This is a benchmark, not a test (``tests/test_foreign.py`` checks
the same equality on lm-eval output written in the test).
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

TINY = ROOT / "flipbench/assets/tiny"


def save_rtn_copy(folder: Path) -> None:
    """The compressed model as the docs make it: flipbench's RTN, 3 bits per channel, saved as a checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flipbench.compress import QuantConfig, compress

    model = AutoModelForCausalLM.from_pretrained(TINY, dtype="float32")
    compress(model, QuantConfig(method="rtn", bits=3))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(TINY).save_pretrained(folder)


def lm_eval(model: Path, out: Path) -> float:
    """The plain lm-eval CLI on the bundled synth group, from tasks/synth (the YAML name their data relative to it)."""
    return timed([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
                  "--tasks", "synth", "--include_path", ".", "--batch_size", "16", "--device", "cpu",
                  "--log_samples", "--output_path", str(out)], cwd=ROOT / "tasks/synth")


def flipbench(args: list[str], run_dir: Path) -> float:
    return timed([sys.executable, "-m", "flipbench", *args, "model.name=tiny", f"output.root={run_dir.parent}",
                  f"output.run_dir={run_dir}", "output.plots=false"], cwd=ROOT)


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.1f}%"


def _num(x: float, fmt: str = ".4f") -> str:
    return "n/a" if not np.isfinite(x) else format(x, fmt)


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = summary[summary["group"] == "all"]
    return pd.DataFrame({
        "task": rows["task"], "metric": rows["metric"], "filter": rows["filter"], "n": rows["n"].astype(int),
        "acc_base": rows["acc_base"].map(_pct), "acc_comp": rows["acc_comp"].map(_pct),
        "flips [95% CI]": [f"{_pct(f)} [{100 * lo:.1f}, {100 * hi:.1f}]" for f, lo, hi in
                           zip(rows["flips"], rows["flips_ci_low"], rows["flips_ci_high"])],
        "lost": rows["lost"].map(_pct), "gained": rows["gained"].map(_pct),
        "label_loyalty": rows["label_loyalty"].map(_pct), "kl_mean (choice, nats)": rows["kl_mean"].map(_num),
        "kl_p99": rows["kl_p99"].map(_num), "mcnemar_p": rows["mcnemar_p"].map(lambda p: _num(p, ".3g"))})


def differing_columns(a: pd.DataFrame, b: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(columns whose values differ anywhere, columns only one side has); rows matched on task, group, metric,
    filter; NaN equals NaN; exact equality (no tolerance)."""
    key = ["task", "group", "metric", "filter"]
    a, b = a.set_index(key).sort_index(), b.set_index(key).sort_index()
    if not a.index.equals(b.index):
        raise SystemExit("compare_lmeval: the two summaries hold different rows")
    common = [c for c in a.columns if c in b.columns]
    differ = [c for c in common if not a[c].equals(b[c])]
    return differ, sorted(set(a.columns) ^ set(b.columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/compare_lmeval"))
    add_fragment_option(parser, "compare-lmeval")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    load, start = os.getloadavg()[0], time.perf_counter()
    save_rtn_copy(out / "tiny-rtn-w3")
    seconds = {"lm_eval, baseline": lm_eval(TINY, out / "lmeval/base"),
               "lm_eval, compressed": lm_eval(out / "tiny-rtn-w3", out / "lmeval/rtn3"),
               "flipbench compare": flipbench(["compare", str(out / "lmeval/base"), str(out / "lmeval/rtn3")],
                                              out / "runs/compare"),
               "one process": flipbench(["compression=rtn", "compression.bits=3", "eval.token_kl=false",
                                         "eval.batch_size=16"], out / "runs/one-process")}
    compared = pd.read_csv(out / "runs/compare/summary.csv")
    one = pd.read_csv(out / "runs/one-process/summary.csv")
    differ, one_sided = differing_columns(compared, one)
    verdict = (f"Against the one-process run (`python -m flipbench compression=rtn compression.bits=3 "
               f"eval.token_kl=false eval.batch_size=16`), {len(compared.columns) - len(differ) - len(one_sided)} of "
               f"{len(compared.columns)} `summary.csv` columns are equal in every row, bit for bit; differing: "
               + (", ".join(f"`{c}`" for c in differ) or "none")
               + ("; on one side only: " + ", ".join(f"`{c}`" for c in one_sided) if one_sided else "") + ".")
    body = ("`flipbench compare` on the two lm-eval logs (bundled tiny model and its 3-bit RTN copy, bundled "
            "synthetic tasks, batch size 16), every task row of its `summary.csv`:\n\n"
            + markdown_table(summary_table(compared)) + "\n\n" + verdict + "\n\nSeconds: "
            + "; ".join(f"{k} {v:.1f}" for k, v in seconds.items())
            + f"; {time.perf_counter() - start:.0f} s wall in all.")
    publish(args.fragment, "benchmarks.compare_lmeval", argv, body, load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
