"""flipbench against two plain lm-eval runs on the same two models, measured interleaved.

One round runs the two ``lm-eval`` processes (baseline, compressed), a cold flipbench process (empty output
root, so an empty baseline cache) and the same flipbench command again (baseline cached). Rounds alternate the
order (lm-eval first, then flipbench first), so a change of load during the bench slows both sides of a ratio
rather than faking it; the ratio is taken within each round and reported as the median with its min-max.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

# Both tools run under the same thread policy (flipbench's CLI sets the same default), so the ratio is overhead.
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
           OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))


def timed(args: list[str], cwd: Path, env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env or ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args[:4]))} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def interleaved(name: str, flip: list[str], lm_runs: list[tuple[list[str], Path]], rounds: int, work: Path) -> list[dict]:
    """Per round: seconds of the lm-eval runs together, flipbench cold and cached, and the two ratios.

    ``flip``: the flipbench command without ``output.root`` (each round gets a fresh one); ``lm_runs``: (command,
    working directory) per plain lm-eval process. Returns one row per round with the round's run folders.
    """
    rows = []
    for r in range(rounds):
        root = work / f"results_{name}_{r}"
        command = flip + [f"output.root={root}"]

        def lm_eval() -> float:
            return sum(timed(args, cwd) for args, cwd in lm_runs)

        def flipbench() -> tuple[float, float]:
            return timed(command, work), timed(command, work)

        if r % 2 == 0:
            lm_s = lm_eval()
            cold, cached = flipbench()
        else:
            cold, cached = flipbench()
            lm_s = lm_eval()
        runs = sorted((root / "runs").iterdir())
        rows.append({"model": name, "round": r, "lm_eval_s": lm_s, "cold_s": cold, "cached_s": cached,
                     "cold_ratio": cold / lm_s, "cached_ratio": cached / lm_s, "cold_run": str(runs[0]),
                     "cached_run": str(runs[1])})
    return rows


def _spread(values: list[float], digits: int) -> str:
    return f"{round(statistics.median(values), digits)} ({round(min(values), digits)}–{round(max(values), digits)})"


TARGETS = {"cold": "≤ 1.10", "cached": "≤ 0.60"}  # flipbench's overhead targets against two lm-eval runs


def docs_table(summary_rows: list[dict]) -> str:
    """The docs' overhead table: case, model, both tools' seconds and the ratio (median, min–max), target."""
    import pandas as pd

    from benchmarks.provenance import markdown_table

    frame = pd.DataFrame(summary_rows)
    frame["target"] = frame["case"].map(TARGETS)
    frame = frame[["case", "model", "flipbench_s", "lm_eval_s", "ratio", "target"]]
    return markdown_table(frame.rename(columns={"flipbench_s": "flipbench s", "lm_eval_s": "two lm-eval runs s"}))


def summary(rows: list[dict]) -> list[dict]:
    """Per model and case: median (min–max) over rounds of seconds and of the within-round ratio."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        lm = [r["lm_eval_s"] for r in mine]
        for case in ("cold", "cached"):
            out.append({"case": case, "model": model, "rounds": len(mine),
                        "flipbench_s": _spread([r[f"{case}_s"] for r in mine], 1), "lm_eval_s": _spread(lm, 1),
                        "ratio": _spread([r[f"{case}_ratio"] for r in mine], 3),
                        "ratio_median": round(statistics.median(r[f"{case}_ratio"] for r in mine), 3)})
    return out
