"""Plots read back: each figure's axis labels and the number of bars and points it draws, from the Figure
itself and from the SVG file written (matplotlib keeps every text of an SVG as a comment beside its glyphs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flipbench import plots, sweep
from flipbench.metrics import flip_rate_by_margin, summarize

from tests.metrics.tables import mc_row, table


@pytest.fixture
def drawn(monkeypatch):
    """Every figure plots.save writes, captured before it is closed: [(figure, [png, svg]), ...]."""
    figures = []
    save = plots.save

    def keep(fig, stem):
        paths = save(fig, stem)
        figures.append((fig, paths))
        return paths

    monkeypatch.setattr(plots, "save", keep)
    return figures


def svg_texts(path) -> str:
    return path.read_text()


def summary_two_tasks():
    """Task a: 4 docs, 1 lost; task b: 4 docs, 1 gained; subjects s1/s2 in task a."""
    rows = [mc_row(i, 0, [0.0, -1.0], [-1.0, 0.0] if i == 0 else [0.0, -1.0], task="a", group=f"s{i % 2 + 1}")
            for i in range(4)]
    rows += [mc_row(i, 1, [0.0, -1.0], [-1.0, 0.0] if i == 0 else [0.0, -1.0], task="b") for i in range(4)]
    return table(rows)


def test_accuracy_vs_flips_draws_four_bars_per_task(drawn, tmp_path):
    summary = summarize(summary_two_tasks(), n_resamples=0)
    plots.accuracy_vs_flips(summary, "rtn", "t", tmp_path / "avf")
    (fig, (png, svg)), = drawn
    ax = fig.axes[0]
    assert ax.get_ylabel() == "share of questions (%)" and ax.get_xlabel() == "task (headline metric)"
    heights = [round(p.get_height(), 6) for p in ax.patches]
    # per task: acc base, acc comp, lost, gained (a: 100, 75, 25, 0; b: 0, 25, 0, 25), in drawing order
    assert heights == [100.0, 0.0, 75.0, 25.0, 25.0, 0.0, 0.0, 25.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a\n(acc)", "b\n(acc)"]
    assert "share of questions (%)" in svg_texts(svg) and png.stat().st_size > 0


def test_kl_vs_flips_one_point_per_member_and_task_per_scope(drawn, tmp_path):
    points = pd.DataFrame({"task": ["a", "a", "g"], "method": ["rtn", "gptq", "rtn"], "kl_scope": ["choice", "choice", "token"],
                           "kl_mean": [0.1, 0.2, 0.3], "flips": [0.05, 0.1, 0.2]})
    plots.kl_vs_flips(points, "t", tmp_path / "kvf")
    (fig, (_, svg)), = drawn
    choice, token = fig.axes
    assert choice.get_xlabel() == plots.KL_AXIS["choice"] and token.get_xlabel() == plots.KL_AXIS["token"]
    assert sum(len(c.get_offsets()) for c in choice.collections) == 2 and len(token.collections) == 1
    offsets = np.concatenate([c.get_offsets() for c in choice.collections])
    assert sorted(map(tuple, offsets.tolist())) == [(0.1, 5.0), (0.2, 10.0)]
    assert plots.KL_AXIS["token"] in svg_texts(svg)


def test_flips_by_margin_one_point_per_bin(drawn, tmp_path):
    samples = summary_two_tasks()
    by_margin = flip_rate_by_margin(samples[samples["task"] == "a"], bins=(0, 0.5, 1.0))
    plots.flips_by_margin(by_margin, "rtn", "t", tmp_path / "fbm")
    (fig, _), = drawn
    ax = fig.axes[0]
    assert ax.get_ylabel() == "flip rate (% of questions in the bin)"
    (line,) = ax.get_lines()[:1]
    # margin tanh(0.5) = 0.46 for every doc: bin (0, 0.5] holds 4 docs, 1 flipped; (0.5, 1] none
    assert line.get_ydata()[0] == pytest.approx(25.0) and np.isnan(line.get_ydata()[1])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["[0, 0.5]\nn = 4", "(0.5, 1]\nn = 0"]


def test_subject_flips_two_bars_per_subject(drawn, tmp_path):
    summary = summarize(summary_two_tasks(), n_resamples=0)
    plots.subject_flips(summary, "a", "rtn", "t", tmp_path / "sf")
    (fig, _), = drawn
    ax = fig.axes[0]
    assert ax.get_ylabel() == "subject" and ax.get_xlabel() == "flips (% of the subject's questions, rtn)"
    assert len(ax.patches) == 4  # lost and gained for s1 and s2
    assert [t.get_text() for t in ax.get_yticklabels()] == ["s2", "s1"]  # fewest flips first: s2 0%, s1 50%


def test_sweep_plot_one_line_per_method_with_a_point_per_member(drawn, tmp_path):
    table_ = pd.DataFrame({"task": ["a"] * 3, "method": ["rtn", "rtn", "gptq"], "avg_bits": [3.0, 4.0, 3.0],
                           "flips": [0.2, 0.1, 0.15]})
    sweep.plot_against(table_, "avg_bits", "flips", "flips (% of questions)", "t", tmp_path / "s")
    (fig, (_, svg)), = drawn
    ax = fig.axes[0]
    assert ax.get_xlabel() == "average bits per compressed weight (bits)" and ax.get_ylabel() == "flips (% of questions)"
    lines = {line.get_label(): line.get_xydata().tolist() for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert lines == {"gptq": [[3.0, 15.0]], "rtn": [[3.0, 20.0], [4.0, 10.0]]}
    assert "average bits per compressed weight (bits)" in svg_texts(svg)
