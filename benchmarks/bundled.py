"""The bundled tiny model's measured tables: each case runs flipbench itself and writes its table to
``docs/measured/bundled-<case>.md``.

    python -m benchmarks.bundled [--only default bits noise-floor quant prune replicas] [--work DIR]

Cases (the flipbench command each runs, on the bundled model and its four synthetic tasks, test splits):

- ``default``: ``flipbench`` as ``make eval`` runs it (4-bit RTN per channel): summary.csv's headline rows.
- ``bits``: RTN at 8 and 2 bits: accuracy and flips per task beside the baseline.
- ``noise-floor``: ``eval.noise_floor=dtype`` (the baseline in bf16 against fp32) beside 4-bit RTN's flips.
- ``quant``: the sweep ``compression=rtn,gptq,tacq compression.bits=2,3``: flips and Δacc per method.
- ``prune``: magnitude/Wanda/SparseGPT at 50% and 2:4, and layer dropping of 1 and 2 blocks (three MC tasks).
- ``replicas``: 2-bit GPTQ with ``compression.replicas=3`` beside single runs on 1 and on 2 threads.

Counts (accuracy, flips, intervals) do not depend on the machine's load; each fragment states how long its runs took
and the CPU load (:func:`benchmarks.provenance.load_note`). Plots are off (``output.plots=false``): they change no
number, except in ``default``, whose accuracy-vs-flips plot is the README's
(``flipbench/assets/readme/accuracy_vs_flips.png``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks import provenance
from benchmarks.provenance import load_note, markdown_table, write_fragment

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
MC = "'suite.tasks=[synth_mmlu,synth_arc,synth_hellaswag]'"


def flipbench(work: Path, name: str, overrides: list[str], sweep: bool = False, env: dict | None = None) -> Path:
    """Run ``python -m flipbench <overrides>`` with its output under ``work/name``; the run (or sweep) folder."""
    out = work / name
    where = [f"hydra.sweep.dir={out}"] if sweep else [f"output.run_dir={out}"]
    args = [sys.executable, "-m", "flipbench", *(["-m"] if sweep else []), "output.plots=false", *overrides,
            f"output.root={work / 'results'}", *where]
    subprocess.run(args, env=dict(os.environ, **ENV, **(env or {})), check=True, stdout=subprocess.DEVNULL)
    return out


def headline(run: Path) -> pd.DataFrame:
    summary = pd.read_csv(run / "summary.csv")
    return summary[summary["headline"] & (summary["group"] == "all")].set_index("task", drop=False)


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"


def pp(x: float) -> str:
    return f"{100 * x:+.1f}".replace("-", "−")


def metric_name(row) -> str:
    return f"{row['metric']} ({row['filter']})" if row["filter"] != "none" else row["metric"]


README_PLOT = Path(__file__).resolve().parents[1] / "flipbench" / "assets" / "readme" / "accuracy_vs_flips.png"


def default_case(work: Path) -> tuple[str, str]:
    run = flipbench(work, "default", ["output.plots=true"])
    rows = headline(run)
    if provenance.MEASURED == provenance.ROOT / "docs" / "measured":  # not when tests redirect the fragments
        # the README shows this run's plot beside its table (checked against the fragment by tests/test_readme_numbers)
        shutil.copyfile(run / "plots" / "accuracy_vs_flips.png", README_PLOT)
    table = pd.DataFrame({
        "task": rows["task"], "metric": rows.apply(metric_name, axis=1), "n": rows["n"],
        "acc_base": rows["acc_base"].map(pct), "acc_comp": rows["acc_comp"].map(pct),
        "Δacc (pp)": rows["delta_acc"].map(pp), "flips": rows["flips"].map(pct), "lost": rows["lost"].map(pct),
        "gained": rows["gained"].map(pct), "label loyalty": rows["label_loyalty"].map(pct),
        "KL mean (nats)": [f"{k:.4f} ({s})" for k, s in zip(rows["kl_mean"], rows["kl_scope"])]})
    return "make eval", markdown_table(table)


def bits_case(work: Path) -> tuple[str, str]:
    runs = {b: headline(flipbench(work, f"rtn-w{b}", ["compression=rtn", f"compression.bits={b}"])) for b in (8, 2)}
    first = runs[8]
    table = pd.DataFrame({"task": [f"{t} ({metric_name(r)})" for t, r in first.iterrows()],
                          "baseline": first["acc_base"].map(pct).to_numpy()})
    for b, rows in runs.items():
        table[f"{b}-bit: acc / flips"] = [f"{pct(a)} / {pct(f)}" for a, f in zip(rows["acc_comp"], rows["flips"])]
    return "make eval BITS=8; make eval BITS=2", markdown_table(table)


def noise_case(work: Path) -> tuple[str, str]:
    run = flipbench(work, "noise", ["eval.noise_floor=dtype"])
    rows = headline(run)
    table = pd.DataFrame({
        "task": [f"{t} ({metric_name(r)})" for t, r in rows.iterrows()], "flips (4-bit RTN)": rows["flips"].map(pct),
        "noise floor: bf16 vs fp32 baseline, flips [exact 95%]": [
            f"{pct(f)} [{100 * lo:.1f}, {100 * hi:.1f}]" for f, lo, hi in
            zip(rows["noise_flips"], rows["noise_flips_ci_low"], rows["noise_flips_ci_high"])],
        "flips_excess": [f"{pp(x)} pp" for x in rows["flips_excess"]],
        "noise mean KL (nats)": [f"{k:.2g} ({s})" for k, s in zip(rows["noise_kl_mean"], rows["noise_kl_scope"])]})
    gsm = rows.loc["synth_gsm8k"]
    note = (f"The compressed side's token-level KL on synth_gsm8k ({int(gsm['n_tokens'])} answer tokens): mean "
            f"{gsm['kl_mean']:.4f} ± {gsm['kl_se']:.5f} nats, p99 {gsm['kl_p99']:.3f}, max {gsm['kl_max']:.2f}, same "
            f"top token {100 * gsm['same_top']:.2f} ± {100 * gsm['same_top_se']:.2f} %, RMS Δp {pct(gsm['dp_rms'])}, "
            f"ln(PPL_c/PPL_b) {gsm['ln_ppl_ratio']:.4f} ± {gsm['ln_ppl_ratio_se']:.4f}.")
    return 'make eval ARGS="eval.noise_floor=dtype"', markdown_table(table) + "\n\n" + note


def cells(table: pd.DataFrame, column_of, columns: list[str]) -> pd.DataFrame:
    """task (x bits) rows, one column per member kind: 'flips (Δacc)' in points; the fewest flips in bold."""
    out = []
    keys = ["task", "bits"] if "bits" in columns else ["task"]
    for key, group in table.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key))
        values = {column_of(r): r for _, r in group.iterrows()}
        best = min(r["flips"] for r in values.values())
        for name in (c for c in columns if c not in keys):
            r = values.get(name)
            if r is None:
                row[name] = ""
                continue
            text = f"{100 * r['flips']:.1f} ({pp(r['delta_acc'])})"
            row[name] = f"**{100 * r['flips']:.1f}** ({pp(r['delta_acc'])})" if r["flips"] == best else text
        out.append(row)
    return pd.DataFrame(out)


def quant_case(work: Path) -> tuple[str, str]:
    from flipbench.sweep import collect

    table = collect(flipbench(work, "quant", ["compression=rtn,gptq,tacq", "compression.bits=2,3"], sweep=True))
    table["bits"] = table["bits"].astype(int)
    names = {"rtn": "RTN", "gptq": "GPTQ", "tacq": "TACQ"}
    body = markdown_table(cells(table, lambda r: names[r["method"]], ["task", "bits", "RTN", "GPTQ", "TACQ"]))
    avg = table.groupby(["method", "bits"])["avg_bits"].first()
    costs = "; ".join(f"{names[m]} w{b} {v:.2f}" for (m, b), v in avg.items())
    return ('make sweep METHODS=rtn,gptq,tacq BITS=2,3 ARGS="output.plots=false"',
            "Flips (% of test questions) on each task's headline metric, Δ accuracy in points in brackets; the fewest "
            f"flips per row in bold.\n\n{body}\n\navg_bits: {costs}.")


def prune_case(work: Path) -> tuple[str, str]:
    from flipbench.sweep import collect

    pruned = collect(flipbench(work, "prune", ["compression=magnitude,wanda,sparsegpt",
                                                "compression.pattern=unstructured,2:4", MC.strip("'")], sweep=True))
    dropped = collect(flipbench(work, "layerdrop", ["compression=layerdrop", "compression.n_layers=1,2", MC.strip("'")],
                                sweep=True))
    names = {"magnitude": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}

    def column(r) -> str:
        if r["method"] == "layerdrop":
            blocks = r["run"].split("-")[-1].lstrip("n")
            return f"drop {blocks} block{'s' if blocks != '1' else ''}"
        return f"{names[r['method']]} {'2:4' if '2_4' in r['run'] else '50%'}"

    columns = ["task"] + [f"{names[m]} {p}" for p in ("50%", "2:4") for m in names] + ["drop 1 block", "drop 2 blocks"]
    both = pd.concat([pruned, dropped], ignore_index=True)
    body = markdown_table(cells(both, column, columns))
    kept = both.groupby("run")[["sparsity", "params_kept"]].first()
    costs = "; ".join(f"{r}: sparsity {pct(s)}, params kept {pct(k)}" for r, (s, k) in kept.iterrows())
    return ("make sweep METHODS=magnitude,wanda,sparsegpt TASKS=synth_mmlu,synth_arc,synth_hellaswag "
            'ARGS="compression.pattern=unstructured,2:4"; make sweep METHODS=layerdrop '
            'TASKS=synth_mmlu,synth_arc,synth_hellaswag ARGS="compression.n_layers=1,2"',
            "Flips (% of questions) on each task's headline metric, Δ accuracy in points in brackets; the fewest flips "
            f"per row in bold.\n\n{body}\n\nMeasured on the weights: {costs}.")


def replicas_case(work: Path) -> tuple[str, str]:
    gptq = ["compression=gptq", "compression.bits=2"]
    rows = headline(flipbench(work, "replicas", [*gptq, "compression.replicas=3"]))
    one = headline(flipbench(work, "gptq-1-thread", gptq, env={"OMP_NUM_THREADS": "1"}))
    two = headline(flipbench(work, "gptq-2-threads", gptq, env={"OMP_NUM_THREADS": "2"}))
    table = pd.DataFrame({
        "task": rows["task"],
        "replicas' flips min / median / max": [f"{pct(a)} / {pct(m)} / {pct(b)}" for a, m, b in
                                               zip(rows["flips_rep_min"], rows["flips_rep_median"], rows["flips_rep_max"])],
        "robust": rows["flips_robust"].map(pct), "unstable": rows["flips_unstable"].map(pct),
        "replica 0": rows["flips"].map(pct), "single run, 1 thread": one["flips"].map(pct),
        "single run, 2 threads": two["flips"].map(pct)})
    return ("flipbench compression=gptq compression.bits=2 compression.replicas=3; the same without replicas with "
            "OMP_NUM_THREADS=1 and =2", markdown_table(table))


CASES = {"default": default_case, "bits": bits_case, "noise-floor": noise_case, "quant": quant_case,
         "prune": prune_case, "replicas": replicas_case}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--work", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="flipbench-bundled-"))
    for name in args.only:
        load, start = os.getloadavg()[0], time.perf_counter()
        what, body = CASES[name](work / name)
        note = f"Runs: {what}; {time.perf_counter() - start:.0f} s wall. {load_note(load)}"
        print(write_fragment(f"bundled-{name}", f"python -m benchmarks.bundled --only {name}", f"{body}\n\n{note}"),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
