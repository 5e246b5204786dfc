"""The HTML under test: every *.html under input/, one parameter each."""
from __future__ import annotations

from pathlib import Path

import pytest

from htmlcheck import INPUT, html_files


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "html_path" in metafunc.fixturenames:
        files = html_files()
        metafunc.parametrize("html_path", files, ids=[str(f.relative_to(INPUT)) for f in files])


@pytest.fixture
def html_text(html_path: Path) -> str:
    return html_path.read_text(encoding="utf-8", errors="replace")
