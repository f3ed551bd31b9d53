"""The real tier's measured table: per method x bits x task, accuracy, flips and the flips' spread over compression
replicas, and which methods the replicas distinguish. Written by ``python -m benchmarks.real`` into
``docs/measured/<fragment>.md``; ``python -m benchmarks.real_table <sweep dir> ... --command CMD`` rebuilds it from
finished sweeps.

RTN draws no data: its replicas are identical by construction, so its one run is its range (a point). Two methods
whose ranges (min..max of flips over replicas) overlap are "not distinguished" (flipbench.replicas.distinguished).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import pandas as pd

from benchmarks.provenance import markdown_table, write_fragment
from flipbench.replicas import distinguished
from flipbench.sweep import collect


def rows(sweep_dirs: list[Path]) -> pd.DataFrame:
    """One row per member x task (headline metric, whole task), with flips_rep_* (a point for a member without
    replicas)."""
    table = pd.concat([collect(d) for d in sweep_dirs], ignore_index=True)
    for column in ("flips_rep_min", "flips_rep_median", "flips_rep_max", "replicas"):
        if column not in table:
            table[column] = float("nan")
    single = table["flips_rep_min"].isna()
    for column in ("flips_rep_min", "flips_rep_median", "flips_rep_max"):
        table.loc[single, column] = table.loc[single, "flips"]
    table.loc[single, "replicas"] = 1
    table["bits"] = table["bits"].astype(int)
    return table.sort_values(["task", "bits", "method"], ascending=[True, False, True]).reset_index(drop=True)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def accuracy_table(table: pd.DataFrame) -> pd.DataFrame:
    out = table.assign(acc_base=table["acc_base"].map(_pct), acc_comp=table["acc_comp"].map(_pct),
                       flips=table["flips"].map(_pct),
                       spread=[f"{_pct(a)} / {_pct(m)} / {_pct(b)}" if r > 1 else "one run (no data drawn)"
                               for a, m, b, r in zip(table["flips_rep_min"], table["flips_rep_median"],
                                                     table["flips_rep_max"], table["replicas"])],
                       replicas=table["replicas"].astype(int))
    out = out[["task", "bits", "method", "n", "acc_base", "acc_comp", "flips", "spread", "replicas"]]
    return out.rename(columns={"acc_base": "acc base", "acc_comp": "acc comp (replica 0)",
                               "flips": "flips (replica 0)", "spread": "flips over replicas: min / median / max"})


def comparison_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per task x bits x method pair: both flip ranges and whether they stay apart."""
    out = []
    for (task, bits), group in table.groupby(["task", "bits"], sort=False):
        ranges = {r["method"]: (r["flips_rep_min"], r["flips_rep_max"]) for _, r in group.iterrows()}
        for a, b in itertools.combinations(sorted(ranges), 2):
            (lo_a, hi_a), (lo_b, hi_b) = ranges[a], ranges[b]
            apart = distinguished(ranges[a], ranges[b])
            fewer = (a if hi_a < lo_b else b) if apart else ""
            out.append({"task": task, "bits": bits, "pair": f"{a} vs {b}",
                        "flip ranges": f"{_pct(lo_a)}–{_pct(hi_a)} vs {_pct(lo_b)}–{_pct(hi_b)}",
                        "distinguished": f"yes: {fewer} flips fewer" if apart else "no (ranges overlap)"})
    return pd.DataFrame(out)


def body(table: pd.DataFrame, note: str = "") -> str:
    comparison = comparison_table(table)
    apart = comparison[comparison["distinguished"].str.startswith("yes")]
    summary = (f"{len(apart)} of {len(comparison)} method pairs (per task and bit width) are distinguished by the "
               "compression noise" + (": " + "; ".join(f"{r['task']} w{r['bits']} {r['distinguished'][5:]} "
                                                        f"({r['pair']})" for _, r in apart.iterrows())
                                      if len(apart) else "") + ".")
    parts = [markdown_table(accuracy_table(table)), "",
             "Flips over replicas: the spread of the flip rate over the compression replicas (other calibration "
             "draws, `calibration.seed + r`); RTN draws no data, so its one run is its range.", "",
             markdown_table(comparison_table(table)), "", summary]
    if note:
        parts += ["", note]
    return "\n".join(parts)


def write(sweep_dirs: list[Path], name: str, command: str, note: str = "") -> Path:
    return write_fragment(name, command, body(rows(sweep_dirs), note))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--fragment", default="real-tier")
    parser.add_argument("--command", required=True, help="the command that ran the sweeps (the provenance line)")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    print(write(args.sweeps, args.fragment, args.command, args.note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
