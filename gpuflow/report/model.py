"""The report model: what a summary says about one notebook or one run, as
written to summary.json and rendered to Markdown and HTML."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from gpuflow.core import tables


@dataclass(frozen=True, kw_only=True)
class Summary:
    title: str
    status: str  # "success" | "failed"
    exit_code: int
    steps: list[dict[str, Any]]
    tests: dict[str, Any] | None
    notebook: dict[str, Any]
    gpu: dict[str, Any] | None
    artifacts: list[dict[str, Any]]
    missing: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.title}: {self.status} (exit {self.exit_code})"

    def _repr_html_(self) -> str:
        rows = [(s["name"], s["status"], s["exit_code"], s["duration_s"], s["error"]) for s in self.steps]
        return tables.table(rows, header=("step", "status", "exit", "seconds", "error"), caption=str(self))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)
