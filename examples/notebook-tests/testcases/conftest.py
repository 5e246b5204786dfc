"""The HTML under test: every *.html under input/, one parameter each."""
from __future__ import annotations

from pathlib import Path

import pytest

INPUT = Path(__file__).resolve().parent.parent / "input"


def html_files() -> list[Path]:
    return sorted(INPUT.rglob("*.html"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "html_path" in metafunc.fixturenames:
        files = html_files()
        metafunc.parametrize("html_path", files, ids=[str(f.relative_to(INPUT)) for f in files])


@pytest.fixture
def html_text(html_path: Path) -> str:
    return html_path.read_text(encoding="utf-8", errors="replace")
