"""Step records: the small JSON file each step leaves in its artifact dir.

`gpuflow.summary` reads them to tell what happened, so the summary is
computed from what the steps recorded, never assumed.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuflow.fsutil import atomic_write_text
from gpuflow.log import redact

RECORD_DIR = "steps"


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    name: str
    status: str  # "success" | "failed" | "skipped"
    exit_code: int
    duration_s: float
    error: str | None = None
    started_at: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return redact(json.dumps(dataclasses.asdict(self), indent=2, default=str))


def write(artifact_dir: str | os.PathLike[str], record: StepRecord) -> Path:
    return atomic_write_text(Path(artifact_dir) / RECORD_DIR / f"{record.name}.json", record.to_json())


def read_all(artifact_dir: str | os.PathLike[str]) -> list[StepRecord]:
    """Every readable record in the dir, oldest first; unreadable ones are skipped."""
    records = []
    folder = Path(artifact_dir) / RECORD_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            records.append(StepRecord(**data))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(records, key=lambda r: r.started_at or "")
