"""Fixtures for the report steps: real notebooks, real nbconvert, real pytest."""
from __future__ import annotations

import base64
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_SUITE = ROOT / "examples" / "notebook-tests"


@pytest.fixture(autouse=True)
def _cache_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # never write to the user's ~/.cache from tests
    monkeypatch.setenv("GPUFLOW_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gpuflow-cache"))


def tiny_png() -> str:
    """A real 1x1 PNG, base64-encoded, as a notebook's image/png output holds it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0\xff\0\0"))
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + raw + chunk(b"IEND", b"")).decode()


def executed_notebook(path: Path, *, fail: bool = False) -> Path:
    """A notebook as papermill leaves it after running the bundled scrna notebook
    (markers, a figure), or, with `fail`, stopped by an error mid-way."""
    nb = new_notebook(metadata={"language_info": {"name": "python"}})
    nb.cells = [
        new_markdown_cell("# scRNA preprocessing"),
        new_code_cell("print('gpuflow-scrna: filtered 120 cells x 40 genes')", execution_count=1,
                      outputs=[new_output("stream", name="stdout", text="gpuflow-scrna: filtered 120 cells x 40 genes\n"),
                               new_output("stream", name="stderr", text="UserWarning: a harmless warning\n")]),
        new_code_cell("plot()", execution_count=2,
                      outputs=[new_output("display_data", data={"image/png": tiny_png(), "text/plain": "<Figure>"})]),
    ]
    if fail:
        nb.cells.append(new_code_cell("1/0", execution_count=3, outputs=[new_output(
            "error", ename="ZeroDivisionError", evalue="division by zero",
            traceback=["\x1b[0;31mZeroDivisionError\x1b[0m    Traceback (most recent call last)",
                       "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"])]))
    else:
        nb.cells.append(new_code_cell("print('gpuflow-scrna: done')", execution_count=3,
                                      outputs=[new_output("stream", name="stdout", text="gpuflow-scrna: done\n")]))
    nbformat.write(nb, path)
    return path


@pytest.fixture
def good_notebook(tmp_path: Path) -> Path:
    return executed_notebook(tmp_path / "scrna_output.ipynb")


@pytest.fixture
def suite_copy(tmp_path: Path) -> Iterator[Path]:
    dest = tmp_path / "notebook-tests"
    shutil.copytree(EXAMPLE_SUITE, dest)
    yield dest
