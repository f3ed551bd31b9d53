"""The README cannot include the docs' measured fragments (it renders on its own), so its measured table is checked
against the fragment the measuring command wrote: a rerun that changes a number fails here until the README says
the same."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def table_rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows keyed by their first cell, cells stripped, the KL cell's '(choice)' tag dropped (the
    README leaves it implicit); header and rule rows skipped."""
    rows = {}
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip().removesuffix("(choice)").strip() for c in line.strip().strip("|").split("|")]
        if cells[0].startswith("synth_"):
            rows[cells[0]] = cells
    return rows


def test_readme_default_table_is_the_measured_fragment():
    readme = table_rows((ROOT / "README.md").read_text())
    measured = table_rows((ROOT / "docs" / "measured" / "bundled-default.md").read_text())
    assert set(measured) == {"synth_arc", "synth_gsm8k", "synth_hellaswag", "synth_mmlu"}
    assert readme == measured


def test_table_rows_reads_cells_and_drops_the_choice_tag():
    text = "| task | n |\n|---|---|\n| synth_x | 0.0030 (choice) |\n| other | 1 |\n"
    assert table_rows(text) == {"synth_x": ["synth_x", "0.0030"]}
