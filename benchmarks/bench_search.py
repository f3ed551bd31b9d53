"""Budget search against the full grid it replaces, on the bundled tiny model and synth tasks.

    python -m benchmarks.bench_search --out results/bench [--limit 40] [--max-flips 0.1] [--space default]

Both go through ``flipbench.search.run`` over the same space (SPACE below, 11 configurations of RTN and GPTQ;
``--space default`` takes conf/search_space/default.yaml's 24, TACQ included), limits and docs:
the grid with one rung (every configuration at full fidelity, nothing pruned or skipped), the search with its
defaults (a 25% rung, successive halving, skipping what costs at least a passing configuration). Each starts
from its own empty cache, so each pays for its own baseline evaluations. Writes search.csv and search.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

GRID = ["search.min_fraction=1.0", "search.pruner=none", "search.skip_costlier=false"]
SPACE = ["~search_space", "+search.space.rtn.bits=[2,3,4,8]", "+search.space.rtn.group_size=[-1,128]",
         "+search.space.gptq.bits=[2,3,4]"]


def one(mode: str, extra: list[str], common: list[str], work: Path) -> dict:
    from flipbench.search import run

    start = time.perf_counter()
    folder = run([*common, f"output.root={work / mode}", f"search.id={mode}", *extra])
    seconds = time.perf_counter() - start
    rec = json.loads((folder / "recommendation.json").read_text())
    return {"mode": mode, "configurations": rec["grid_size"], "full_fidelity_evaluations": rec["full_fidelity_evaluations"],
            "screening_evaluations": rec["screening_evaluations"], "rungs_docs": "/".join(map(str, rec["rungs"])),
            "seconds": round(seconds, 1), "recommended": rec.get("label"), "avg_bits": rec.get("avg_bits"),
            "passes": rec["passes"], "folder": str(folder)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="budget search vs full grid")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--limit", type=int, default=40, help="docs per task at full fidelity")
    parser.add_argument("--space", choices=("small", "default"), default="small", help="small: SPACE; default: the config's")
    parser.add_argument("--max-flips", type=float, default=0.1, help="gate.max_flips for every task")
    parser.add_argument("--work", type=Path, default=None, help="keep the searches here (default: a temp folder)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    common = [f"suite.limit={args.limit}", f"gate.max_flips={args.max_flips}", *(SPACE if args.space == "small" else [])]
    work = args.work or Path(tempfile.mkdtemp(prefix="flipbench-search-bench-"))
    rows = [one("search", [], common, work), one("grid", GRID, common, work)]
    table = pd.DataFrame(rows)
    search, grid = rows
    table["as_cheap_as_grid"] = [search["avg_bits"] <= grid["avg_bits"] + 1e-12] * 2
    table.to_csv(args.out / "search.csv", index=False)
    shown = table.drop(columns="folder")
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    text = (f"Budget search vs full grid: bundled tiny model, synth suite, suite.limit={args.limit}, "
            f"gate.max_flips={args.max_flips}, space {args.space}\n\n" + "\n".join(lines) + "\n")
    (args.out / "search.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
