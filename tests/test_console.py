"""The console a person reads: one line per stage, one bar per side, a work estimate; the rest in run.log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flipbench import evaluate
from flipbench.config import ConfigError, to_typed
from tests.conftest import compose

STAGES = ("load_baseline", "evaluate_baseline", "token_kl_reference", "compress", "evaluate_compressed", "metrics", "report")
NOISE = ("Building contexts", "Running loglikelihood", "Running generate_until", "Selected tasks", "Filter", "Map")


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # Bytes, decoded here: text=True would turn each bar redraw's carriage return into a new line.
    done = subprocess.run([sys.executable, "-m", "flipbench", *args], cwd=cwd, capture_output=True, env=env, timeout=600)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def screen_lines(stderr: str) -> list[str]:
    """What stays on a terminal: the last redraw of each bar, every logged line."""
    return [line.split("\r")[-1] for line in stderr.split("\n") if line.split("\r")[-1].strip()]


@pytest.fixture(scope="module")
def quiet_run(random_llama, mini_tasks, tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    args = [f"model=hf", f"model.path={random_llama}", f"suite.include_path={mini_tasks}", "suite.tasks=[mini_mc,mini_gen]",
            "+suite.task_limits.mini_mc=5", f"output.root={root / 'results'}", "eval.batch_size=4", "eval.bootstrap=0",
            "output.plots=false", "compression=rtn", "compression.bits=4"]
    return run_cli(args, root), args, root


def test_console_is_one_line_per_stage_and_one_bar_per_side(quiet_run):
    done, _, root = quiet_run
    assert done.returncode == 0, done.stderr[-3000:]
    lines = screen_lines(done.stderr)
    stage_lines = [line for line in lines if re.search(r"stage \w+ \.\.\.$", line)]
    assert [line.split("stage ")[1].split()[0] for line in stage_lines] == list(STAGES)
    # mini_mc limited to 5 docs x 4 choices, mini_gen's 6 docs x 1 generation.
    assert any("work per side: 11 docs, 26 requests" in line for line in lines), lines
    for side in ("baseline", "compressed"):
        bars = [line for line in lines if line.startswith(f"{side}:")]
        assert len(bars) == 1 and "11/11" in bars[0] and re.search(r"doc/s|s/doc", bars[0]), bars
    assert not [line for line in lines if line.startswith(NOISE)], lines
    assert len(lines) <= len(STAGES) + 6  # stages, run directory, estimate, two bars, the final line
    run_log = next((root / "results" / "runs").iterdir()) / "run.log"
    # lm-eval's own logging lands in run.log (its context building happens once, in the pre-check, before the
    # run folder exists; the evaluation reuses it: flipbench.reuse)
    assert re.search(r"\]\[lm_eval[.\w]*\]\[(INFO|WARNING)\]", run_log.read_text())


@pytest.mark.slow  # a second CLI run; the quiet one above is the default check
def test_verbose_shows_lm_eval_output(quiet_run):
    _, args, root = quiet_run
    done = run_cli(["-v", *args], root)  # the baseline comes from the cache; the compressed side runs again
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Building contexts" in done.stderr


def test_task_limits_take_the_first_docs_per_task(random_llama, mini_tasks, tmp_path):
    class Plan:
        reported = {"mmlu_anatomy": "mmlu", "mmlu_astronomy": "mmlu", "arc_easy": "arc_easy"}

    limits = evaluate.doc_limits(dict.fromkeys(Plan.reported), Plan, 7, {"mmlu": 2})
    assert limits == {"mmlu_anatomy": 2, "mmlu_astronomy": 2, "arc_easy": 7}
    from flipbench.side import preflight

    with pytest.raises(ConfigError, match="suite.task_limits.gsm8k: gsm8k is not a task of this run"):
        preflight(to_typed(compose(["suite.tasks=[synth]", "+suite.task_limits.gsm8k=3"])))
    preflight(to_typed(compose(["suite.tasks=[synth]", "+suite.task_limits.synth_arc=3"])))  # a task inside a group
