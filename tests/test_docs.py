"""The README stays a front door and the docs site stays whole, without building it (no mkdocs import):
README length, relative links that resolve, a nav that names every page, a generated configuration reference."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKDOWN = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INDENTED_CODE = re.compile(r"(?:^(?: {4}|\t).*\n?)+", re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(text: str) -> list[str]:
    """Link targets outside code, without external URLs and same-page anchors."""
    text = INLINE_CODE.sub("", INDENTED_CODE.sub("", FENCE.sub("", text)))
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^(?:[a-z][a-z0-9+.-]*:|#)", t)]


def nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in nav_pages(value)]
    return []


def test_relative_links_finds_links_outside_code_only():
    text = ("[a](docs/a.md) ![img](x.png) [web](https://x.org) [here](#top) `[no](code.md)`\n"
            "```\n[no](fenced.md)\n```\n    [no](indented.md)\n[b](b.md#part)\n")
    assert relative_links(text) == ["docs/a.md", "x.png", "b.md#part"]


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move reference and measurements into docs/"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    missing = [target for target in relative_links(path.read_text())
               if not (path.parent / target.split("#", 1)[0]).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_nav_names_every_page_and_only_existing_ones():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = nav_pages(config["nav"])
    assert len(pages) == len(set(pages)), "a page is listed twice in mkdocs.yml's nav"
    assert [p for p in pages if not (DOCS / p).is_file()] == [], "mkdocs.yml's nav names missing pages"
    unlisted = sorted(p.name for p in DOCS.glob("*.md") if p.name not in pages)
    assert unlisted == [], f"docs pages missing from mkdocs.yml's nav: {unlisted}"


def test_configuration_reference_is_generated():
    spec = importlib.util.spec_from_file_location("gen_config_reference", DOCS / "gen_config_reference.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (DOCS / "configuration.md").read_text() == generator.render(), (
        "docs/configuration.md is out of date: run `python docs/gen_config_reference.py` and commit it")


SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$', re.M)


def test_measured_tables_are_written_by_a_command_and_included():
    """Each fragment under docs/measured/ opens with the marker naming its command and a provenance line (commit,
    CPU, threads), and a page includes it; every include names an existing fragment."""
    fragments = sorted((DOCS / "measured").glob("*.md"))
    included = {name for page in DOCS.glob("*.md") for name in SNIPPET.findall(page.read_text())}
    assert [n for n in included if not (DOCS / n).is_file()] == [], "a page includes a missing measured fragment"
    for path in fragments:
        head = path.read_text().splitlines()[:2]
        assert head[0].startswith("<!-- written by `") and head[1].startswith("*Measured by `"), path.name
        assert " at commit `" in head[1] and "threads" in head[1], path.name
        assert f"measured/{path.name}" in included, f"docs/measured/{path.name} is not included by any page"
