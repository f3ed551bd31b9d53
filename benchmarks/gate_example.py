"""docs/gate.md's worked example: the ``make eval`` configuration gated on the pessimistic interval ends, and the same
limits on point estimates.

    python -m benchmarks.gate_example [--out results/gate_example]

Runs ``flipbench gate.on=upper_ci gate.max_acc_drop=0.02 gate.max_choice_kl_mean=0.05 gate.max_token_kl_mean=0.01``
(the bundled tiny model vs its RTN w4 copy; exit 3 when the gate fails), then judges the run's ``summary.csv`` with
the same limits under ``gate.on=point`` through the gate's own function (``flipbench.gate.evaluate_gate``), and
writes per task the answers lost and gained, Δacc with its Tango interval, every check's value against its limit
and both verdicts to ``docs/measured/gate-example.md``. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmarks.overhead import ENV
from benchmarks.provenance import ROOT, add_fragment_option, markdown_table, publish
from flipbench.config import GateConfig
from flipbench.gate import evaluate_gate

LIMITS = {"max_acc_drop": 0.02, "max_choice_kl_mean": 0.05, "max_token_kl_mean": 0.01}


def checks_text(task: dict) -> str:
    return "; ".join(f"{c['check']} {c['value']:.4f} {'≤' if c['pass'] else '>'} {c['limit']:g}" for c in task["checks"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/gate_example"))
    add_fragment_option(parser, "gate-example")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    run_dir = out / "run"
    load = os.getloadavg()[0]
    overrides = ["gate.on=upper_ci", *(f"gate.{k}={v}" for k, v in LIMITS.items())]
    done = subprocess.run([sys.executable, "-m", "flipbench", *overrides, "output.plots=false", f"output.root={out}",
                           f"output.run_dir={run_dir}"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    if done.returncode not in (0, 3):
        raise SystemExit(f"gate_example: flipbench exited {done.returncode}:\n{done.stderr[-3000:]}")
    summary = pd.read_csv(run_dir / "summary.csv")
    upper = json.loads((run_dir / "manifest.json").read_text())["gate"]
    point = evaluate_gate(summary, GateConfig(on="point", **LIMITS))
    head = summary[summary["headline"] & (summary["group"] == "all")].set_index("task")
    rows = []
    for u, p in zip(upper["tasks"], point["tasks"]):
        r = head.loc[u["task"]]
        rows.append({"task": u["task"], "lost / gained of n": f"{int(round(r['lost'] * r['n']))} / "
                                                              f"{int(round(r['gained'] * r['n']))} of {int(r['n'])}",
                     "Δacc [Tango 95%] (pp)": f"{100 * r['delta_acc']:+.1f} [{100 * r['delta_acc_ci_low']:+.2f}, "
                                               f"{100 * r['delta_acc_ci_high']:+.2f}]",
                     "checks under upper_ci": checks_text(u), "verdict, upper_ci": u["verdict"],
                     "checks on point estimates": checks_text(p), "verdict, point": p["verdict"]})
    body = (f"`python -m flipbench {' '.join(overrides)}` (the `make eval` configuration: bundled tiny model vs its "
            f"RTN w4 copy) exited {done.returncode}, gate {upper['verdict']}; the same limits on point estimates "
            f"(`gate.on=point`, judged on the same `summary.csv`): {point['verdict']}.\n\n"
            + markdown_table(pd.DataFrame(rows)))
    publish(args.fragment, "benchmarks.gate_example", argv, body, load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
