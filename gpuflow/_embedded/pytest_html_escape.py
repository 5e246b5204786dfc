"""A pytest plugin that makes pytest-html show test ids as text.

pytest-html puts each test id into its report as HTML, and the test id of a
test repo comes from names gpuflow does not control: the staged HTML's file
name is the notebook's, and a parametrized id is whatever the test repo made
of it. A notebook named `<img src=x onerror=alert(1)>.ipynb` would otherwise
run its script in the browser of whoever opens the report. Loaded with `-p
gpuflow_pytest_html_escape` from a copy of this file, only when pytest-html
is installed (the hook is pytest-html's).

Standalone on purpose (stdlib and pytest only): the test environment may be a
venv without gpuflow.
"""
from __future__ import annotations

import html
from typing import Any


def pytest_html_results_table_row(report: Any, cells: list[str]) -> None:
    test_id = report.nodeid if report.when == "call" else f"{report.nodeid}::{report.when}"
    for i, cell in enumerate(cells):
        if cell.startswith('<td class="col-testId">'):
            cells[i] = f'<td class="col-testId">{html.escape(test_id)}</td>'
