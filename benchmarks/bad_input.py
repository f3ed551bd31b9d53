"""docs/reliability.md's timings: how fast bad input is refused.

    python -m benchmarks.bad_input [--out results/bad_input]

Runs ``pytest tests/test_bad_input.py`` with a JUnit report of each test's call time (fixtures apart) and times one
command line with an unknown task name (``flipbench 'suite.tasks=[no_such_task]'``, exit 2 after indexing
lm-eval's whole task registry to suggest the closest names). Writes the refused cases' spread, the command-line
case, the hostile-text run on the bundled model and the unknown-task command to ``docs/measured/bad-input.md``.
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

from benchmarks.overhead import ENV
from benchmarks.provenance import ROOT, add_fragment_option, markdown_table, publish

GROUPS = {  # test name prefix -> what the docs call it
    "test_bad_input_is_one_line_before_any_evaluation": "refused cases, in-process (one per parametrized case)",
    "test_command_line_bad_input_exits_2_with_one_line": "refused on the command line (a new process)",
    "test_hostile_text_completes_with_an_intact_report": "hostile-text run on the bundled model (completes)",
}


def test_times(junit: Path) -> pd.DataFrame:
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_bad_input.py",
                    f"--junitxml={junit}", "-o", "junit_duration_report=call"], cwd=ROOT, env=ENV, check=True)
    cases = [(c.get("name"), float(c.get("time"))) for c in ET.parse(junit).getroot().iter("testcase")]
    return pd.DataFrame(cases, columns=["name", "seconds"])


def unknown_task_seconds(out: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flipbench", "suite.tasks=[no_such_task]", f"output.root={out}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 2:
        raise SystemExit(f"bad_input: an unknown task exited {done.returncode}, not 2:\n{done.stderr[-2000:]}")
    return seconds, done.stderr.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bad_input"))
    add_fragment_option(parser, "bad-input")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    times = test_times(out / "junit.xml")
    rows = []
    for prefix, label in GROUPS.items():
        s = times[times["name"].str.startswith(prefix)]["seconds"]
        rows.append({"what": label, "cases": len(s),
                     "seconds": f"{s.iloc[0]:.1f}" if len(s) == 1 else f"{s.min():.1f}–{s.max():.1f} (median {s.median():.1f})"})
    seconds, message = unknown_task_seconds(out)
    rows.append({"what": "unknown task name on the command line (`flipbench 'suite.tasks=[no_such_task]'`)",
                 "cases": 1, "seconds": f"{seconds:.1f}"})
    body = ("`pytest tests/test_bad_input.py`, each test's call time (JUnit, fixtures apart), and one command line "
            "timed as a whole process:\n\n" + markdown_table(pd.DataFrame(rows))
            + f"\n\nThe unknown task's one line: `{message}`")
    publish(args.fragment, "benchmarks.bad_input", argv, body, load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
