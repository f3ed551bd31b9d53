"""``flipbench compare BASE COMP1 COMP2 ...``: one baseline against several compressed sides, viewed as a sweep.

Each compressed side is compared with the baseline exactly as ``flipbench compare BASE COMP`` does, into a member
run folder inside one sweep folder; the sweep's tables are then built from those members by
:func:`flipbench.sweep.aggregate` (sweep_summary.csv, sweep_overlap.csv, sweep_correlation.csv, plots,
sweep_report.md), as after a Hydra multirun. The sweep folder is ``output.run_dir`` when given, else
``<output.root>/sweeps/<UTC time>-compare``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

from flipbench.config import ConfigError


def member_name(side: str) -> str:
    """A member folder's tag from the side's argument: the first path's file stem or folder name."""
    first = Path(side.split(",")[0].rstrip("/"))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", first.stem or first.name)[:40] or "side"


def _sweep_dir(overrides: list[str]) -> tuple[Path, list[str]]:
    """(sweep folder, the overrides every member takes): output.run_dir names the sweep, not a member."""
    values = dict(o.lstrip("+").split("=", 1) for o in overrides)
    rest = [o for o in overrides if o.lstrip("+").split("=", 1)[0] not in ("output.run_dir", "output.run_id")]
    if values.get("output.run_dir"):
        return Path(values["output.run_dir"]), rest
    stamp = values.get("output.run_id") or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-compare"
    return Path(values.get("output.root", "results")) / "sweeps" / stamp, rest


def compare_many(base: str, comps: list[str], overrides: list[str]) -> tuple[Path, list[Path]]:
    """Compare ``base`` with each of ``comps`` (side arguments as ``flipbench compare`` takes them) into member
    folders of one sweep folder, then aggregate it. Returns (sweep folder, member run folders).

    Every side is loaded and checked before anything is written: a bad side is a ConfigError naming it."""
    from flipbench import artifact, sweep
    from flipbench.compare import compare, parse_args

    parse_args([base, *comps, *overrides])  # the same override rules as one comparison
    if len(comps) < 2:
        raise ConfigError("a sweep view needs at least two compressed sides: flipbench compare BASE COMP1 COMP2 ...")
    sweep_dir, member_overrides = _sweep_dir(overrides)
    names = [f"{i}-{member_name(c)}" for i, c in enumerate(comps)]
    baseline = artifact.load_side(base.split(","), "baseline")
    for comp, name in zip(comps, names):  # refuse before the first member is written
        artifact.check_compatible(baseline, artifact.load_side(comp.split(","), f"compressed side {name}"))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    runs = [compare([base, comp, *member_overrides, f"output.run_dir={sweep_dir / name}"])
            for comp, name in zip(comps, names)]
    sweep.aggregate(sweep_dir)
    return sweep_dir, runs


def verdicts(runs: list[Path]) -> dict[str, str]:
    """Each member's gate verdict (PASS, FAIL or 'not set'), by member folder name."""
    return {run.name: (json.loads((run / "manifest.json").read_text()).get("gate") or {}).get("verdict", "not set")
            for run in runs}
