"""Budget search against the full grid it replaces, on the bundled tiny model and synth tasks.

    python -m benchmarks.bench_search --out results/bench [--limit 40] [--max-flips 0.1] [--space default]
    python -m benchmarks.bench_search --example      # docs/search.md's worked example -> docs/measured/search_example.md

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


EXAMPLE = ["~search_space", "+search.space.rtn.bits=[2,3,4]", "+search.space.gptq.bits=[2,3]", "compression.replicas=3",
           "gate.max_flips=0.15", "search.skip_costlier=false", "search.id=example"]


def _pct(value) -> str:
    return "" if pd.isna(value) else f"{100 * value:.1f}%"


def example(work: Path) -> Path:
    """docs/search.md's worked example: screening on bounds and ranking with compression replicas, on the bundled
    model's whole synth suite; the tables go to docs/measured/search_example.md."""
    from benchmarks.provenance import markdown_table, write_fragment
    from flipbench.search import run

    start = time.perf_counter()
    folder = run([*EXAMPLE, f"output.root={work}"])
    seconds = time.perf_counter() - start
    trials = pd.read_csv(folder / "trials.csv")
    configs = pd.read_csv(folder / "configurations.csv")
    rec = json.loads((folder / "recommendation.json").read_text())
    screen = rec["screening"]
    screened = trials[(trials["fidelity"] > 0) & (trials["fidelity"] < 1)].sort_values(["trial", "task"])
    rows = pd.DataFrame({"trial": screened["trial"], "configuration": screened["label"], "task": screened["task"],
                         "docs": [f"{int(n)} of {int(a)}" for n, a in zip(screened["n"], screened["available"])],
                         "flips": [_pct(v) for v in screened["flips"]],
                         "full-benchmark flips bounds": [f"{_pct(lo)} – {_pct(hi)}" for lo, hi in
                                                         zip(screened["flips_lower"], screened["flips_upper"])],
                         "screen": screened["screen"], "trial state": screened["state"]})
    ranking = pd.DataFrame({"rank": configs["rank"], "configuration": configs["label"],
                            "avg bits": [f"{v:.3f}" for v in configs["avg_bits"]], "worst task": configs["worst_task"],
                            "flips": [_pct(v) for v in configs["worst_flips"]],
                            "replica flips (min – max)": [f"{_pct(lo)} – {_pct(hi)}" for lo, hi in
                                                          zip(configs["worst_flips_rep_min"], configs["worst_flips_rep_max"])],
                            "replicas": configs["replicas"].astype("Int64"),
                            "not distinguished from": configs["not_distinguished_from"].fillna(""),
                            "passes": configs["passes"]})
    noise = rec.get("compression_noise") or {}
    body = "\n".join([
        f"`flipbench search {' '.join(EXAMPLE)}` (bundled tiny model, synth suite, every doc): rungs "
        f"{', '.join(f'{100 * x:g}%' for x in rec['rungs'])} of every task's docs; {rec['trials']} trials, "
        f"{rec['screening_evaluations']} screening and {rec['full_fidelity_evaluations']} full-fidelity evaluations, "
        f"{seconds:.0f} s.", "",
        f"Screening error budget: gate.alpha = {screen['alpha']:g} over {screen['screening_rungs']} screening rung(s) × "
        f"{screen['checks']} checks (max_flips on each task) = {screen['alpha_per_check']:.3g} per bound. "
        f"Dropped at screening: {', '.join(screen['dropped']) or 'none'}.", "",
        markdown_table(rows), "",
        f"Ranking at full fidelity (replica ranges on each configuration's worst task; RTN runs once, identical by "
        f"construction). Recommendation: **{rec.get('label')}** ({'passes' if rec['passes'] else 'none passes'}); "
        f"runner-up {noise.get('runner_up')}, distinguished by flips: {noise.get('distinguished_from_runner_up')}.", "",
        markdown_table(ranking)])
    return write_fragment("search_example", "python -m benchmarks.bench_search --example", body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="budget search vs full grid")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--limit", type=int, default=40, help="docs per task at full fidelity")
    parser.add_argument("--space", choices=("small", "default"), default="small", help="small: SPACE; default: the config's")
    parser.add_argument("--max-flips", type=float, default=0.1, help="gate.max_flips for every task")
    parser.add_argument("--work", type=Path, default=None, help="keep the searches here (default: a temp folder)")
    parser.add_argument("--example", action="store_true", help="docs/search.md's worked example (writes its fragment)")
    args = parser.parse_args(argv)
    if args.example:
        print(example(args.work or Path(tempfile.mkdtemp(prefix="flipbench-search-example-"))).read_text())
        return 0
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
