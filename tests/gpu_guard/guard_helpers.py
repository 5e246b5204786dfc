"""Notebook helpers shared by the CPU (tests/gpu_guard) and GPU (tests/gpu)
suites of the guard."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat

KERNELSPEC = {"name": "python3", "language": "python", "display_name": "Python 3"}


def notebook(path: Path, *sources: str, tags: tuple[list[str], ...] = ()) -> Path:
    """Write a notebook of code cells; `tags[i]` tags cell i."""
    cells = [nbformat.v4.new_code_cell(s) for s in sources]
    for cell, cell_tags in zip(cells, tags, strict=False):  # tags may cover only the first cells
        cell.metadata["tags"] = cell_tags
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC}), path)
    return path


def outputs_text(nb: Any) -> str:
    """Every stream/text output of an executed notebook, joined."""
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
