"""The sequential gate through collect / compare: sides collected separately (and in shards) on a prefix of the
seeded order, decided by compare over the docs both hold; a longer collect evaluates only the new chunks."""

from __future__ import annotations

import json
import types

import pandas as pd
import pytest

from flipbench import artifact, sequential
from flipbench.config import ConfigError, FlipbenchConfig


def _side(order: dict, frame: pd.DataFrame) -> artifact.Side:
    return artifact.Side([], {}, frame, None, None, {"orders": order, "chunk": 4})


def _frame(task: str, ids, wrong=()):
    return pd.DataFrame([dict(task=task, group="all", doc_id=i, filter="none", correct=float(i not in wrong),
                              output_type="generate_until") for i in ids])


def test_compare_decides_on_the_prefix_both_sides_hold(monkeypatch):
    from flipbench import compare, pairing

    monkeypatch.setattr(pairing, "pair", lambda b, c: b.merge(c, on=["task", "group", "doc_id", "filter"],
                                                               suffixes=("_base", "_comp")))
    order = {"t": {"order": [["t", i] for i in (5, 2, 9, 0, 7, 1, 3, 8, 4, 6, 11, 10)], "kinds": ["generate_until"]}}
    # the baseline holds the first 8 docs of the order, the compressed side the first 4 (its shard layout aside)
    base = _side(order, _frame("t", [5, 2, 9, 0, 7, 1, 3, 8]))
    comp = _side(order, _frame("t", [5, 2, 9, 0], wrong={2}))
    cfg = FlipbenchConfig()
    cfg.gate.sequential, cfg.gate.max_flips = True, 0.5
    b, c, info = compare._sequential(base, comp, cfg)
    # 1 flip in 4 of 12, a = 0.05 / 3 looks: P_K(X <= 1) = (C(12-K,4) + K C(12-K,3)) / C(12,4) is 9/495 = 0.018 > a
    # at K = 9 and 0 at K = 10, so the upper bound is 9/12 > 0.5; the lower bound 1/12 <= 0.5: undecided
    assert info["t"]["docs"] == 4 and info["t"]["available"] == 12 and info["t"]["decision"] == "undecided"
    assert sorted(c["doc_id"]) == [0, 2, 5, 9] and len(b) == 4
    assert info["t"]["checks"]["max_flips"]["upper"] == pytest.approx(9 / 12)
    assert info["t"]["checks"]["max_flips"]["lower"] == pytest.approx(1 / 12)
    with pytest.raises(ConfigError, match="fewer than one look"):
        compare._sequential(base, _side(order, _frame("t", [5, 2])), cfg)
    with pytest.raises(ConfigError, match="collected with gate.sequential=true"):
        compare._sequential(base, artifact.Side([], {}, comp.samples, None, None), cfg)


@pytest.mark.slow
def test_sequential_collect_compare_and_a_longer_collect(random_llama, mini_tasks, tmp_path):
    from conftest import compose, mini_overrides
    from flipbench.collect import collect
    from flipbench.compare import compare

    root = tmp_path / "results"
    common = mini_overrides(random_llama, mini_tasks, root) + ["compression=rtn", "compression.bits=2",
                                                               "gate.sequential=true", "gate.chunk=4"]
    art = tmp_path / "art"
    collect(compose(common + ["side=baseline", f"output.artifact={art}/base", "gate.sequential_docs=8"]))
    for i in (0, 1):
        collect(compose(common + ["side=compressed", f"shard={i}/2", f"output.artifact={art}/comp",
                                  "gate.sequential_docs=4"]))
    order = json.loads((art / "base" / artifact.ORDER).read_text())["orders"]
    held = pd.read_parquet(art / "base" / artifact.SAMPLES).drop_duplicates(["task", "doc_id"])
    assert sorted(held[held["task"] == "mini_mc"]["doc_id"]) == sorted(i for _, i in order["mini_mc"]["order"][:8])
    run_dir = compare([str(art / "base"), str(art / "comp"), "gate.sequential=true", "gate.max_flips=0.9",
                       f"output.run_dir={tmp_path}/run"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    info = manifest["sequential"]
    assert info["mini_mc"]["docs"] == 4 and info["mini_mc"]["available"] == 12
    samples = pd.read_parquet(run_dir / "samples.parquet")
    assert sorted(samples[samples["task"] == "mini_mc"]["doc_id"].unique()) == sorted(
        i for _, i in order["mini_mc"]["order"][:4])
    # a longer collect of the compressed side reads the chunk a shorter one evaluated from the chunk store
    stored = lambda: {p: p.stat().st_mtime_ns for p in (root / "cache" / "chunks").rglob("*.parquet")}  # noqa: E731
    before = stored()
    collect(compose(common + ["side=compressed", f"output.artifact={art}/comp4", "gate.sequential_docs=4"]))
    first = {p: t for p, t in stored().items() if p not in before}
    collect(compose(common + ["side=compressed", f"output.artifact={art}/comp8", "gate.sequential_docs=8"]))
    after = stored()
    assert len(first) == 1 and len(after) == len(before) + 2  # the second collect stored one new chunk
    assert all(after[p] == t for p, t in first.items())  # and read the first one, not evaluated again
    run8 = compare([str(art / "base"), str(art / "comp8"), "gate.sequential=true", "gate.max_flips=0.9",
                    f"output.run_dir={tmp_path}/run8"])
    assert json.loads((run8 / "manifest.json").read_text())["sequential"]["mini_mc"]["docs"] in (4, 8)


def test_prefix_chunks_up_to_the_budget_and_a_shards_share():
    order = {"t": {"order": [["t", i] for i in (5, 2, 9, 0, 7, 1, 3, 8, 4, 6, 11, 10)], "kinds": ["multiple_choice"]}}
    cfg = FlipbenchConfig()
    cfg.gate.max_flips, cfg.gate.chunk = 0.1, 4
    states, n_checks = sequential.states_from(order, cfg.gate, budget=6)  # 6 docs: up to the look at 8
    assert n_checks == 1 and states["t"].budget == 8
    assert sequential.prefix_chunks(states) == [{"t": [0, 2, 5, 9]}, {"t": [1, 3, 7, 8]}]
    even = {"t": list(range(0, 12, 2))}
    assert sequential.prefix_chunks(states, even) == [{"t": [0, 2]}, {"t": [8]}]
