"""Budget search against the full grid it replaces, on the bundled tiny model and synth tasks.

    python -m benchmarks.bench_search --out results/bench [--limit 40] [--max-flips 0.1] [--space default] [--fragment NAME]
    python -m benchmarks.bench_search --example      # docs/search.md's worked example -> docs/measured/search_example.md

Both go through ``flipbench.search.run`` over the same space (SPACE below, 11 configurations of RTN and GPTQ;
``--space default`` takes conf/search_space/default.yaml's 24, TACQ included), limits and docs:
the grid with one rung (every configuration at full fidelity, nothing pruned or skipped), the search with its
defaults (a screening rung on a seeded 25% share of every task's docs judged on confidence bounds, successive
halving, skipping what costs at least a passing configuration). Each starts from its own empty cache, so each pays
for its own baseline evaluations. Writes search.csv and search.md, and the table to docs/measured/<--fragment>.md
(default search-grid; '' for none).
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
    trials = pd.read_csv(folder / "trials.csv")
    skipped = trials.loc[(trials["fidelity"] == 0) & trials["skipped"].astype(str).str.startswith("costs"), "label"]
    return {"mode": mode, "configurations": rec["grid_size"], "rungs": " → ".join(f"{100 * x:g}%" for x in rec["rungs"]),
            "skipped": int(skipped.nunique()), "screening_evaluations": rec["screening_evaluations"],
            "dropped_at_screening": len(rec["screening"]["dropped"]),
            "full_fidelity_evaluations": rec["full_fidelity_evaluations"], "seconds": round(seconds, 1),
            "recommended": rec.get("label"), "avg_bits": rec.get("avg_bits"), "passes": rec["passes"],
            "docs_per_task": rec["screening"]["available"], "folder": str(folder)}


def fragment_body(rows: list[dict], args) -> str:
    """The search-vs-grid table and what it says, in numbers the two searches wrote."""
    from benchmarks.provenance import markdown_table

    search, grid = rows

    def bits(r: dict) -> str:
        return f"{r['avg_bits']:.3f} bits" if r["avg_bits"] is not None else "no configuration"

    table = pd.DataFrame([{"mode": r["mode"], "configurations": r["configurations"], "rungs": r["rungs"],
                           "skipped (cost)": r["skipped"], "screening evaluations": r["screening_evaluations"],
                           "dropped at screening": r["dropped_at_screening"],
                           "full-fidelity evaluations": r["full_fidelity_evaluations"], "seconds": r["seconds"],
                           "recommended": r["recommended"], "avg bits": f"{r['avg_bits']:.3f}" if r["avg_bits"] is not None else "",
                           "passes": "yes" if r["passes"] else "no"} for r in rows])
    docs = ", ".join(f"{task} {n}" for task, n in sorted(search["docs_per_task"].items()))
    cheap = search["avg_bits"] is not None and grid["avg_bits"] is not None and search["avg_bits"] <= grid["avg_bits"] + 1e-12
    return "\n".join([
        f"Bundled tiny model, synth suite with `suite.limit={args.limit}` (docs per task at full fidelity: {docs}), "
        f"`gate.max_flips={args.max_flips}` on every task, space `{args.space}`; one run of each mode.", "",
        markdown_table(table), "",
        f"The search recommends {search['recommended']} ({bits(search)}), the grid {grid['recommended']} "
        f"({bits(grid)}): as cheap as the grid's: {'yes' if cheap else 'no'}. "
        f"The search ran {search['full_fidelity_evaluations']} of the grid's {grid['full_fidelity_evaluations']} "
        f"full-fidelity evaluations and {search['screening_evaluations']} screening ones, in "
        f"{search['seconds']:.0f} s against {grid['seconds']:.0f} s."])


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
    import os

    from benchmarks.provenance import add_fragment_option, command_line, write_fragment

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="budget search vs full grid")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--limit", type=int, default=40, help="docs per task at full fidelity")
    parser.add_argument("--space", choices=("small", "default"), default="small", help="small: SPACE; default: the config's")
    parser.add_argument("--max-flips", type=float, default=0.1, help="gate.max_flips for every task")
    parser.add_argument("--work", type=Path, default=None, help="keep the searches here (default: a temp folder)")
    parser.add_argument("--example", action="store_true", help="docs/search.md's worked example (writes its fragment)")
    add_fragment_option(parser, "search-grid")
    args = parser.parse_args(argv)
    if args.example:
        print(example(args.work or Path(tempfile.mkdtemp(prefix="flipbench-search-example-"))).read_text())
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    common = [f"suite.limit={args.limit}", f"gate.max_flips={args.max_flips}", *(SPACE if args.space == "small" else [])]
    work = args.work or Path(tempfile.mkdtemp(prefix="flipbench-search-bench-"))
    load = os.getloadavg()[0]
    rows = [one("search", [], common, work), one("grid", GRID, common, work)]
    table = pd.DataFrame(rows).drop(columns="docs_per_task")
    search, grid = rows
    table["as_cheap_as_grid"] = [search["avg_bits"] is not None and grid["avg_bits"] is not None
                                 and search["avg_bits"] <= grid["avg_bits"] + 1e-12] * 2
    table.to_csv(args.out / "search.csv", index=False)
    body = fragment_body(rows, args)
    text = f"Budget search vs full grid\n\n{body}\n"
    (args.out / "search.md").write_text(text)
    print(text)
    if args.fragment:
        write_fragment(args.fragment, command_line("benchmarks.bench_search", argv), body, load_at_start=load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
