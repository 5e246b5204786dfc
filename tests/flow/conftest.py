"""Tiny real notebooks and a tiny real test repo for `gpuflow run`."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

STEP_MODULES = ("gpuflow.execute", "gpuflow.convert", "gpuflow.stage", "gpuflow.test", "gpuflow.summary")


@pytest.fixture
def steps_present() -> None:
    missing = [m for m in STEP_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"step modules not merged yet: {', '.join(missing)}")


@pytest.fixture
def test_repo(tmp_path: Path) -> Path:
    """Checks that exactly one HTML was staged and that it holds the notebook's output."""
    repo = tmp_path / "tests-repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "pytest.ini").write_text("[pytest]\nmarkers =\n    single_cell: the scRNA notebook\n")
    (repo / "tests" / "test_html.py").write_text(
        "from pathlib import Path\nimport pytest\n\n"
        "@pytest.mark.single_cell\ndef test_one_html_with_output():\n"
        "    pages = list(Path('input').glob('*.html'))\n"
        "    assert len(pages) == 1, pages\n"
        "    assert 'RESULT=' in pages[0].read_text()\n"
    )
    return repo
