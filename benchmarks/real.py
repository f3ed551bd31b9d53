"""``make real``: the real-model tier. SmolLM2-135M-Instruct against its RTN, GPTQ and TACQ copies at 3 and 4
bits, on real MMLU (5-shot, dev shots), ARC-Challenge, HellaSwag and Winogrande by lm-eval's standard protocols.

    python -m benchmarks.real --scratch results/real [--subjects 6 --mmlu-docs 2 --arc-docs 15 ...]

Everything comes from PyPI (see :mod:`benchmarks.real_setup`) and lives under ``--scratch``; the run is one
flipbench sweep (``<scratch>/results/sweeps/...``: sweep_summary.csv, sweep_report.md, plots) whose members share one
baseline evaluation. Sizes are docs per task (the first N of each); MMLU takes the first ``--mmlu-docs`` test
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

from benchmarks import real_setup

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


def overrides(model: Path, data: Path, mmlu: Path, args) -> list[str]:
    return [
        "-m", "model=hf", f"model.path={model}", "model.name=smollm2-135m", "model.dtype=float32",
        *suite_overrides(data, mmlu, args),
        f"calibration.n_samples={args.calib_samples}", f"calibration.seq_len={args.calib_len}",
        f"eval.batch_size={args.batch_size}", f"output.root={args.scratch / 'results'}",
        f"compression={args.methods}", f"compression.bits={args.bits}",
        "hydra/launcher=local_parallel", f"hydra.launcher.n_jobs={args.jobs}",
    ]


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
    args = parser.parse_args(argv)
    args.scratch = args.scratch.resolve()
    pkgs = args.scratch / "pkgs"
    real_setup.install(pkgs)
    model = real_setup.convert(pkgs, (args.model_dir or args.scratch / "smollm2-135m").resolve())
    data = real_setup.data_root(pkgs)
    mmlu = mmlu_subset(data, args.scratch / "mmlu_subset", args.subjects)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flipbench", *overrides(model, data, mmlu, args)], env=env)
    print(f"real tier: {time.perf_counter() - start:.0f} s wall, exit {done.returncode}; "
          f"tables and plots under {args.scratch / 'results' / 'sweeps'}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
