"""The overhead bench interleaves the tools it compares and reports per-round ratios as median and min-max."""

from __future__ import annotations

import sys

from benchmarks import overhead

# Stand-ins for the tools: each appends its letter to a log; the flipbench one also makes a run folder.
LOG_STEP = "import sys, pathlib; pathlib.Path(sys.argv[1]).open('a').write(sys.argv[2])"
FLIP_STEP = LOG_STEP + "; import os, time; os.makedirs(sys.argv[-1].split('=', 1)[1] + '/runs/' + str(time.time_ns()))"


def test_rounds_alternate_which_tool_goes_first(tmp_path):
    log = tmp_path / "order.txt"
    flip = [sys.executable, "-c", FLIP_STEP, str(log), "F"]
    lm = [([sys.executable, "-c", LOG_STEP, str(log), "L"], tmp_path)] * 2
    rows = overhead.interleaved("m", flip, lm, rounds=3, work=tmp_path)
    assert log.read_text() == "LLFF" + "FFLL" + "LLFF"  # A,B then B,A: a load drift hits both sides
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["cold_ratio"] == r["cold_s"] / r["lm_eval_s"] for r in rows)
    assert all(r["cold_run"] != r["cached_run"] for r in rows)


def test_summary_is_median_and_range_of_the_within_round_ratios():
    rows = [{"model": "m", "lm_eval_s": lm, "cold_s": cold, "cached_s": cached, "cold_ratio": cold / lm,
             "cached_ratio": cached / lm} for lm, cold, cached in ((10.0, 5.0, 4.0), (20.0, 8.0, 6.0), (40.0, 30.0, 8.0))]
    cold, cached = overhead.summary(rows)
    # cold ratios 0.5, 0.4, 0.75 -> median 0.5, range 0.4-0.75; cached 0.4, 0.3, 0.2
    assert cold["ratio"] == "0.5 (0.4–0.75)" and cold["ratio_median"] == 0.5
    assert cached["ratio"] == "0.3 (0.2–0.4)"
    assert cold["lm_eval_s"] == "20.0 (10.0–40.0)" and cold["flipbench_s"] == "8.0 (5.0–30.0)"
