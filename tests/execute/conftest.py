"""Notebooks for the execute tests are built here, in tmp_path, from cell
sources: each test shows the whole notebook it runs."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

MakeNotebook = Callable[..., Path]


def build_notebook(path: Path, *sources: str, parameters: str | None = None) -> Path:
    """A v4 notebook of code cells; `parameters` becomes a cell tagged "parameters"."""
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = dict(KERNELSPEC)
    cells = []
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata.tags = ["parameters"]
        cells.append(cell)
    cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb.cells = cells
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def make_notebook(tmp_path: Path) -> MakeNotebook:
    def make(*sources: str, name: str = "nb.ipynb", parameters: str | None = None) -> Path:
        return build_notebook(tmp_path / "in" / name, *sources, parameters=parameters)

    return make


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(autouse=True)
def _no_guard_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests are about execution (exit codes, saves, signals) and count
    # cells and execution numbers; the injected GPU guard cell, on by default
    # since the guard landed, has its own tests in tests/gpu_guard.
    from gpuflow.gpu import guard

    monkeypatch.setattr(guard, "setup_cell_source", lambda opts, facts, cell_stats=None, **kwargs: None)
