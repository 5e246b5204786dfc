"""Notebook preparation: read and validate the input, then change an in-memory
copy so that it runs unattended. The input file is never modified.

- kernel-shutdown statements are removed: the blueprint notebooks end with
  `IPython.Application.instance().kernel.do_shutdown(True)`, which kills the
  kernel under papermill and turns a good run into a failure;
- the GPU guard's setup cell, when there is one, becomes the first code cell.

nbformat 3 (and older) notebooks are upgraded in memory to nbformat 4, as
papermill and Jupyter do; a notebook newer than nbformat 4 is refused.
"""
from __future__ import annotations

import ast
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuflow.core.errors import InputError, first_line
from gpuflow.core.log import log

GUARD_TAG = "gpuflow-guard"
# papermill's tag for its error banner cells; gpuflow's banners use it too, so
# papermill and gpuflow both strip stale banners of an earlier run
ERROR_MARKER_TAG = "papermill-error-cell-tag"

# Calls that ask the kernel to shut down, which the blueprints end with. `sys.exit`
# is not here: IPython catches SystemExit and the kernel lives on. Nor is
# `os._exit`: a notebook that ends its own process means it, and that is a
# dead kernel (exit 137), as papermill reports it.
_SHUTDOWN_ATTRS = {"do_shutdown", "ask_exit"}
_SHUTDOWN_NAMES = {"exit", "quit"}
_SHUTDOWN_LINE = re.compile(r"^(?:[\w.()]+\.(?:do_shutdown|ask_exit)\(.*\)|(?:exit|quit)\(\))\s*(?:#.*)?$")


@dataclass(frozen=True, kw_only=True)
class PrepareReport:
    """What preparation changed in the copy (indices are input cell indices)."""

    removed_cells: tuple[int, ...] = ()
    commented_lines: tuple[tuple[int, str], ...] = ()
    guard_injected: bool = False
    rmm_cells: tuple[int, ...] = ()  # the notebook's own RMM set-up, guarded at run time
    upgraded_from: int | None = None

    def summary(self) -> str:
        parts = []
        if self.upgraded_from is not None:
            parts.append(f"upgraded from nbformat {self.upgraded_from}")
        if self.removed_cells:
            parts.append(f"removed kernel-shutdown cell(s) {list(self.removed_cells)}")
        if self.commented_lines:
            parts.append(f"commented out {len(self.commented_lines)} kernel-shutdown line(s)")
        if self.guard_injected:
            parts.append("injected the GPU guard cell")
        if self.rmm_cells and self.guard_injected:
            parts.append(f"the notebook's RMM cell(s) {list(self.rmm_cells)} are guarded")
        return "; ".join(parts) or "unchanged"

    def to_metadata(self) -> dict[str, Any]:
        return {"removed_cells": list(self.removed_cells),
                "commented_lines": [[i, line] for i, line in self.commented_lines],
                "guard_injected": self.guard_injected, "rmm_cells": list(self.rmm_cells),
                "upgraded_from": self.upgraded_from}


RMM_TAG = "gpuflow-rmm-guarded"
_RMM_CALL = re.compile(r"\brmm\.reinitialize\s*\(|set_allocator\(\s*rmm_cupy_allocator")


def load_notebook(path: Path) -> Any:
    """Read and validate a notebook; every problem is one `InputError` line."""
    import nbformat

    data = _read_json(path)
    major = data.get("nbformat")
    if isinstance(major, bool) or not isinstance(major, int) or not isinstance(data.get("metadata", {}), dict):
        raise InputError(f"{path} is not a Jupyter notebook (no integer 'nbformat' field)")
    if major not in nbformat.versions or major < 2:
        raise InputError(f"{path} is nbformat {major}; gpuflow reads nbformat 2 to 4")
    if major >= 4 and not isinstance(data.get("cells"), list):
        raise InputError(f"{path} is not a Jupyter notebook (no 'cells' list)")
    try:
        nb = nbformat.versions[major].to_notebook_json(data, minor=data.get("nbformat_minor", 0))
        if major < 4:
            nb = nbformat.convert(nb, 4)
        nb = nbformat.v4.upgrade(nb)  # 4.x -> 4.5: cell ids, which papermill expects
        _validate(nbformat, nb, path)
    except InputError:
        raise
    except Exception as exc:  # nbformat raises ValidationError, KeyError, ValueError...
        raise InputError(f"{path} is not a valid notebook: {first_line(exc)}") from None
    nb.metadata.setdefault("gpuflow", {})["input_nbformat"] = major
    return nb


def _validate(nbformat: Any, nb: Any, path: Path) -> None:
    """Refuse what cannot run (a cell without its source); warn, as nbclient
    does, about notebook metadata that is off the schema but harmless, such
    as a kernelspec with a language and no name."""
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        where = list(getattr(exc, "relative_path", None) or getattr(exc, "path", None) or [])
        if not where or where[0] != "metadata":
            raise InputError(f"{path} is not a valid notebook: {first_line(exc)}") from None
        log.warning(f"{path}: notebook metadata off the schema, running it anyway "
                    f"({'.'.join(map(str, where))}: {first_line(exc)})")


def kernel_name(nb: Any, given: str | None) -> str:
    """The kernel to run: `given`, else the notebook's kernelspec name, else
    an installed kernel for the notebook's language, else python3."""
    if given:
        return given
    spec = nb.metadata.get("kernelspec") or {}
    if spec.get("name"):
        return str(spec["name"])
    language = spec.get("language") or (nb.metadata.get("language_info") or {}).get("name")
    if language:
        from jupyter_client.kernelspec import KernelSpecManager

        specs = KernelSpecManager().get_all_specs()
        found = sorted(name for name, s in specs.items() if s.get("spec", {}).get("language") == language)
        if found:
            return "python3" if "python3" in found else found[0]
    return "python3"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"input notebook not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"input notebook is a directory: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not raw.strip():
        raise InputError(f"{path} is empty, not a notebook")
    if b"\x00" in raw[:8192]:
        raise InputError(f"{path} is a binary file, not a notebook")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text, not a notebook") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise InputError(f"{path} is not a notebook: its JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:
        hint = " (truncated?)" if exc.pos >= len(text.rstrip()) else ""
        raise InputError(
            f"{path} is not valid JSON{hint}: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a Jupyter notebook (JSON {type(data).__name__}, not an object)")
    return data


def prepare(nb: Any, *, guard_source: str | None = None, report_mode: bool = True) -> PrepareReport:
    """Make `nb` (an in-memory copy) fit to run unattended; say what changed."""
    import nbformat

    nb.cells = [c for c in nb.cells if not _is_injected(c)]
    rmm_cells = _mark_rmm_cells(nb, guarded=bool(guard_source))
    removed, commented = _strip_shutdowns(nb)
    if guard_source:
        cell = nbformat.v4.new_code_cell(guard_source)
        cell.metadata["tags"] = [GUARD_TAG]
        cell.metadata["gpuflow"] = {"injected": "guard"}
        if report_mode:
            cell.metadata["jupyter"] = {"source_hidden": True, "outputs_hidden": False}
        first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
        nb.cells.insert(first_code, cell)
    major = nb.metadata.get("gpuflow", {}).get("input_nbformat", 4)
    report = PrepareReport(
        removed_cells=tuple(removed), commented_lines=tuple(commented),
        guard_injected=bool(guard_source), rmm_cells=tuple(rmm_cells),
        upgraded_from=major if major < 4 else None,
    )
    # what was changed travels with the notebook, so a reader of the output
    # (or of --prepare-only) sees it without the log
    nb.metadata.setdefault("gpuflow", {})["prepare"] = report.to_metadata()
    return report


def _mark_rmm_cells(nb: Any, *, guarded: bool) -> list[int]:
    """Tag the notebook's own RMM set-up cells. The cells are left as they are:
    the injected guard wraps `rmm.reinitialize` in the kernel, so the tag says
    what will happen to them, and the policy decides (docs/gpu.md)."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and _RMM_CALL.search(cell.source):
            found.append(index)
            if guarded:
                tags = cell.metadata.setdefault("tags", [])
                if RMM_TAG not in tags:
                    tags.append(RMM_TAG)
                cell.metadata["gpuflow"] = {"rmm": "guarded: the injected guard cell wraps rmm.reinitialize"}
    return found


def _is_injected(cell: Any) -> bool:
    """Banner and guard cells of an earlier run (re-running an output notebook)."""
    tags = cell.get("metadata", {}).get("tags", [])
    return ERROR_MARKER_TAG in tags or GUARD_TAG in tags


def _strip_shutdowns(nb: Any) -> tuple[list[int], list[tuple[int, str]]]:
    removed: list[int] = []
    commented: list[tuple[int, str]] = []
    kept = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            kept.append(cell)
            continue
        source, lines, only_shutdown = _without_shutdown(cell.source)
        if lines and only_shutdown:
            removed.append(index)
            continue
        if lines:
            cell.source = source
            commented.extend((index, line) for line in lines)
        kept.append(cell)
    nb.cells = kept
    return removed, commented


def _without_shutdown(source: str) -> tuple[str, list[str], bool]:
    """(new source, removed lines, whether the cell did nothing but shut down).

    Only top-level statements are touched: a shutdown inside `if` or `def` is
    the author's logic. Cells with IPython magics do not parse; there a
    line-pattern fallback finds the same calls at column 0.
    """
    lines = source.splitlines()
    try:
        tree = ast.parse(source)
    except SyntaxError:
        hits = [i for i, line in enumerate(lines) if _SHUTDOWN_LINE.match(line)]
        return _comment_out(lines, [(i, i) for i in hits]), [lines[i] for i in hits], False
    spans, helpers = [], set()
    for stmt in tree.body:
        if _is_shutdown_call(stmt):
            spans.append((stmt.lineno - 1, (stmt.end_lineno or stmt.lineno) - 1))
            helpers |= {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)}
    if not spans:
        return source, [], False
    only = all(
        _is_shutdown_call(s) or isinstance(s, (ast.Import, ast.ImportFrom))
        or (isinstance(s, ast.Assign) and all(isinstance(t, ast.Name) and t.id in helpers for t in s.targets))
        for s in tree.body
    )
    removed = ["\n".join(lines[a : b + 1]) for a, b in spans]
    return _comment_out(lines, spans), removed, only


def _is_shutdown_call(stmt: ast.stmt) -> bool:
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return False
    func = stmt.value.func
    if isinstance(func, ast.Attribute):
        return func.attr in _SHUTDOWN_ATTRS
    return isinstance(func, ast.Name) and func.id in _SHUTDOWN_NAMES and not stmt.value.args


def _comment_out(lines: list[str], spans: list[tuple[int, int]]) -> str:
    out = list(lines)
    for a, b in spans:
        for i in range(a, b + 1):
            out[i] = f"# [gpuflow: kernel shutdown removed] {lines[i]}"
    return "\n".join(out)


def check_kernel(name: str) -> None:
    """Refuse a kernel name that no installed kernelspec provides."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        known = ", ".join(sorted(KernelSpecManager().find_kernel_specs())) or "none"
        raise InputError(f"no Jupyter kernel named {name!r} (installed: {known})") from None


def check_writable(directory: Path) -> None:
    """Create `directory` if needed and prove a file can be written there,
    before any kernel starts: a run must not fail at its very end."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".gpuflow-write-test."):
            pass
    except OSError as exc:
        raise InputError(f"output directory {directory} is not writable: {exc.strerror or exc}") from None


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False
