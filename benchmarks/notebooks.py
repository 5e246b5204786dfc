"""Synthetic notebooks: N trivial cells, or cells whose outputs add up to
a given size. Built with nbformat, cached under bench-out/notebooks/."""
from __future__ import annotations

from pathlib import Path

MB = 1024 * 1024


def trivial(path: Path, cells: int) -> Path:
    """A parameters cell plus `cells - 1` one-line code cells."""
    if path.exists():
        return path
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("n = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(f"x{i} = {i} + n") for i in range(1, cells)]
    return _write(nb, path)


def with_outputs(path: Path, megabytes: int, cells: int = 20) -> Path:
    """`cells` code cells, each printing megabytes/cells of text when run,
    so the executed notebook carries about `megabytes` of outputs."""
    if path.exists():
        return path
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    per_cell = megabytes * MB // cells
    # 100-char lines: nbconvert escapes and wraps text outputs line by line
    source = f"print(('x' * 99 + '\\n') * {per_cell // 100}, end='')"
    nb.cells = [nbformat.v4.new_code_cell(source) for _ in range(cells)]
    return _write(nb, path)


def _write(nb: object, path: Path) -> Path:
    import nbformat
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    nbformat.write(nb, str(tmp))
    tmp.replace(path)
    return path
