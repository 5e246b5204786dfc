"""Warnings and errors in an executed notebook's outputs, counted and shown:
lines on stderr, lines that look like Python warnings (`UserWarning: ...`)
and `error` outputs, each with the first few examples and their cell.

RAPIDS' notebook CI scans outputs the same way; here the counts go into
summary.json (`findings`), STEP_SUMMARY.md and index.html, and
`--fail-on-warnings` turns warnings into a failure.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpuflow.core.log import strip_ansi
from gpuflow.notebook.prepare import GUARD_TAG

EXAMPLES = 3  # kept per kind: enough to act on, short enough for a step summary
LINE_CHARS = 300
# `path.py:12: DeprecationWarning: ...` as warnings.showwarning prints it, or a bare `FutureWarning: ...`
WARNING = re.compile(r"\b[A-Z]\w*Warning: ")
# cells gpuflow or papermill put in the output notebook: theirs, not the notebook's
INJECTED_TAGS = (GUARD_TAG, "injected-parameters", "papermill-error-cell-tag")


@dataclass(frozen=True, kw_only=True)
class Example:
    cell: int  # index among the notebook's own cells, from 0 (injected cells not counted)
    text: str


@dataclass(frozen=True, kw_only=True)
class Findings:
    stderr_lines: int = 0
    warnings: int = 0
    errors: int = 0
    stderr_examples: tuple[Example, ...] = field(default_factory=tuple)
    warning_examples: tuple[Example, ...] = field(default_factory=tuple)
    error_examples: tuple[Example, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        return not (self.stderr_lines or self.warnings or self.errors)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.warnings} warning(s), {self.errors} error(s), {self.stderr_lines} stderr line(s)"


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def _short(line: str) -> str:
    line = strip_ansi(line).strip()
    return line if len(line) <= LINE_CHARS else line[:LINE_CHARS - 1] + "…"


def scan_cells(cells: list[Any]) -> Findings:
    """Count and keep the first examples, over a notebook's cells (nbformat JSON)."""
    counts = {"stderr": 0, "warning": 0, "error": 0}
    examples: dict[str, list[Example]] = {k: [] for k in counts}

    def note(kind: str, cell: int, text: str) -> None:
        counts[kind] += 1
        if len(examples[kind]) < EXAMPLES:
            examples[kind].append(Example(cell=cell, text=_short(text)))

    own = -1
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        tags = (cell.get("metadata") or {}).get("tags") or []
        if any(t in INJECTED_TAGS for t in tags):
            continue
        own += 1
        for out in cell.get("outputs") or [] if cell.get("cell_type") == "code" else []:
            if not isinstance(out, dict):
                continue
            kind = out.get("output_type")
            if kind == "error":
                note("error", own, f"{out.get('ename', 'Error')}: {out.get('evalue', '')}")
            elif kind == "stream":
                for line in _text(out.get("text")).splitlines():
                    if not line.strip():
                        continue
                    if out.get("name") == "stderr":
                        note("stderr", own, line)
                    if WARNING.search(line):
                        note("warning", own, line)
    return Findings(stderr_lines=counts["stderr"], warnings=counts["warning"], errors=counts["error"],
                    stderr_examples=tuple(examples["stderr"]), warning_examples=tuple(examples["warning"]),
                    error_examples=tuple(examples["error"]))


def scan(notebook: Path) -> Findings | None:
    """The findings of an executed notebook; None when it is missing or unreadable."""
    try:
        data = json.loads(notebook.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cells = data.get("cells") if isinstance(data, dict) else None
    return scan_cells(cells) if isinstance(cells, list) else None


def rows(findings: Findings) -> list[tuple[str, int, str]]:
    """(kind, cell, text) for every kept example, for the Markdown and HTML tables."""
    return ([("error", e.cell, e.text) for e in findings.error_examples]
            + [("warning", e.cell, e.text) for e in findings.warning_examples]
            + [("stderr", e.cell, e.text) for e in findings.stderr_examples])
