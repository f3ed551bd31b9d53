"""Measured tables in the docs are written by the command that measures them.

Each is a Markdown fragment under ``docs/measured/``: a marker comment naming the command, a provenance line (the
command, git commit, date, CPU model, threads, library versions) and the table. A docs page includes it with
pymdownx.snippets (``--8<-- "measured/NAME.md"``), so a number on the page is one that command wrote, and rerunning
the command rewrites it. ``tests/test_docs.py`` checks every fragment opens this way and is included by a page.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "docs" / "measured"
MARKER = "<!-- written by"


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def commit() -> str:
    """HEAD's short sha, with ``+changes`` when the tracked files differ from it (the numbers then come from code
    that is not in any commit: commit first, then measure)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "flipbench", "benchmarks", "conf", "tasks")
    return sha + ("+changes" if dirty else "")


_AT_IMPORT: str | None = None


def code_commit() -> str:
    """:func:`commit` as it was when this module was first imported: a long measurement names the code it ran,
    even if the worktree moves on before it ends."""
    global _AT_IMPORT
    if _AT_IMPORT is None:
        _AT_IMPORT = commit()
    return _AT_IMPORT


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def machine() -> dict:
    """What a reader needs to compare seconds: CPU, cores, torch threads, OpenMP wait policy, GPU if any."""
    import torch

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def provenance(command: str) -> str:
    """One line: how, where and on which code a table was measured."""
    m = machine()
    where = f"{m['cpu']}, torch threads {m['threads']} of {m['cores']} cores" + (f", {m['gpu']}" if "gpu" in m else "")
    libs = ", ".join(f"{name} {_version(name)}" for name in ("torch", "transformers", "lm_eval"))
    day = _dt.date.today().isoformat()
    return f"*Measured by `{command}` at commit `{code_commit()}` on {day}; {where}; {libs}.*"


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A pipe table (pandas' to_markdown) without the index."""
    return frame.to_markdown(index=False, floatfmt=floatfmt)


def command_line(module: str, argv: list[str]) -> str:
    """``python -m <module> <argv>`` for the provenance line, an absolute path shown as ``<its folder name>`` (a
    machine's paths stay out of the docs; the docs say what the folder holds)."""
    def shown(arg: str) -> str:
        key, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        value = f"<{Path(value).name}>" if value.startswith("/") else value
        return f"{key}{eq}{value}"

    return " ".join(["python -m " + module, *map(shown, argv)])


def add_fragment_option(parser, default: str) -> None:
    """``--fragment NAME``: the docs/measured/ fragment the command writes its table to ('' for none)."""
    parser.add_argument("--fragment", default=default,
                        help=f"write the table to docs/measured/<NAME>.md (default {default}; '' for none)")


def as_fragment(markdown: str) -> str:
    """A command's own Markdown report made includable in a page: its headings become bold lines, so the
    page's own outline stays the page's."""
    return "\n".join(f"**{line.lstrip('#').strip()}**" if line.startswith("#") else line
                     for line in markdown.strip().splitlines())


def write_fragment(name: str, command: str, body: str, folder: Path | None = None,
                   load_at_start: float | None = None) -> Path:
    """Write ``docs/measured/<name>.md``: the marker, the provenance line, then ``body`` (tables and notes), and
    with ``load_at_start`` (``os.getloadavg()[0]`` before the measured work) the CPU load note."""
    if load_at_start is not None:
        body = f"{body.strip()}\n\n{load_note(load_at_start)}"
    folder = Path(folder) if folder is not None else MEASURED
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.md"
    text = f"{MARKER} `{command}`; rerun it to update, do not edit by hand -->\n{provenance(command)}\n\n{body.strip()}\n"
    path.write_text(text)
    return path


def publish(fragment: str, module: str, argv: list[str] | None, body: str, load_at_start: float | None) -> None:
    """A command's last step: with ``--fragment NAME`` write ``body`` there (its provenance line names
    ``python -m <module> <argv>``; ``argv`` None: this process's arguments) and print the path; with ``--fragment ''``
    print ``body`` only."""
    if fragment:
        argv = list(sys.argv[1:] if argv is None else argv)
        print(write_fragment(fragment, command_line(module, argv), body, load_at_start=load_at_start))
    else:
        print(body)


def load_note(load_at_start: float) -> str:
    """What the provenance line cannot know: how busy the CPU was. ``load_at_start``: ``os.getloadavg()[0]`` taken
    before the measured work (other jobs only); the 15-minute average at the end includes the measured work's own
    threads. A start load above half the cores means other work shared the CPU: seconds are not a quiet machine's."""
    now15 = os.getloadavg()[2]
    cores = os.cpu_count() or 1
    busy = load_at_start > 0.5 * cores
    return (f"CPU load average {load_at_start:.1f} before the run (1 min) and {now15:.1f} at its end (15 min, its own "
            f"work included) on {cores} cores" + ("; other jobs shared the CPU, so its seconds are not a quiet "
                                                 "machine's." if busy else "."))


code_commit()
