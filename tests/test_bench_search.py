"""benchmarks.bench_search's docs fragment from two hand-written search results (no search is run)."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks import bench_search


def row(mode: str, full: int, screening: int, dropped: int, skipped: int, label: str, bits: float, seconds: float):
    return {"mode": mode, "configurations": 11, "rungs": "25% → 100%" if screening else "100%", "skipped": skipped,
            "screening_evaluations": screening, "dropped_at_screening": dropped, "full_fidelity_evaluations": full,
            "seconds": seconds, "recommended": label, "avg_bits": bits, "passes": True,
            "docs_per_task": {"synth_arc": 40, "synth_mmlu": 40}}


def test_fragment_body_states_the_table_and_the_comparison():
    rows = [row("search", 3, 6, 2, 5, "rtn-w3", 3.126, 46.7), row("grid", 11, 0, 0, 0, "rtn-w3", 3.126, 49.4)]
    body = bench_search.fragment_body(rows, SimpleNamespace(limit=40, max_flips=0.1, space="small"))
    lines = body.splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("| mode")).strip("|").split("|")]
    assert header == ["mode", "configurations", "rungs", "skipped (cost)", "screening evaluations",
                      "dropped at screening", "full-fidelity evaluations", "seconds", "recommended", "avg bits", "passes"]
    search = [c.strip() for c in next(line for line in lines if line.startswith("| search")).strip("|").split("|")]
    assert search == ["search", "11", "25% → 100%", "5", "6", "2", "3", "46.7", "rtn-w3", "3.126", "yes"]
    assert "docs per task at full fidelity: synth_arc 40, synth_mmlu 40" in body
    assert "as cheap as the grid's: yes" in body and "3 of the grid's 11 full-fidelity" in body
    assert "in 47 s against 49 s" in body
