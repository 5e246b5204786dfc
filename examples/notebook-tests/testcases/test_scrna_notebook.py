"""Checks on the HTML of the bundled single-cell notebook (scrna_preprocessing)."""
from __future__ import annotations

import re

import pytest

import htmlcheck

pytestmark = [pytest.mark.single_cell, pytest.mark.notebook]


def test_input_has_html() -> None:
    # without this, an empty input/ would skip every check and pass
    assert htmlcheck.html_files(), f"no *.html under {htmlcheck.INPUT}: stage the executed notebook's HTML first"


@pytest.fixture
def page(html_text: str) -> htmlcheck.Page:
    return htmlcheck.read(html_text)


def test_html_parses(page: htmlcheck.Page, html_text: str) -> None:
    assert html_text.lstrip().lower().startswith("<!doctype html"), "not an HTML document"
    assert page.elements > 10, "almost no HTML elements: an empty or truncated page"
    assert "</html>" in html_text[-200:].lower(), "the page is truncated"


def test_marker_lines_present(page: htmlcheck.Page) -> None:
    lines = page.marker_lines()
    assert lines, f"no '{htmlcheck.MARKER_PREFIX}' lines: did the notebook's cells run?"
    assert any(re.fullmatch(r"gpuflow-scrna: filtered [\d,]+ cells x [\d,]+ genes", ln) for ln in lines), lines
    assert lines[-1] == "gpuflow-scrna: done", f"the notebook did not reach its end: {lines[-1]!r}"


def test_no_error_outputs(page: htmlcheck.Page, html_text: str) -> None:
    assert htmlcheck.PAPERMILL_BANNER not in page.text, "papermill marked a failed cell"
    assert not page.tracebacks, "error output:\n" + page.tracebacks[0][-800:]


@pytest.mark.figures
def test_figures_present(page: htmlcheck.Page) -> None:
    pngs = [src for src in page.images if src.startswith("data:image/png")]
    assert pngs, "no embedded PNG figures"
