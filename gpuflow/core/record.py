"""Step records: the small JSON file each step leaves in its artifact dir.

`gpuflow.summary` reads them to tell what happened, so the summary is
computed from what the steps recorded, never assumed.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuflow.core.artifacts import ArtifactDir
from gpuflow.core.fsutil import atomic_write_text
from gpuflow.core.log import redact


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


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def finished(
    name: str, exit_code: int, duration_s: float, *, error: str | None = None,
    details: dict[str, Any] | None = None, started_at: str | None = None, status: str | None = None,
) -> StepRecord:
    """The record of a step that ended with `exit_code` (status derived unless given)."""
    return StepRecord(
        name=name, status=status or ("success" if exit_code == 0 else "failed"), exit_code=exit_code,
        duration_s=round(duration_s, 3), error=error, started_at=started_at or utc_now(),
        details=dict(details or {}),
    )


def write(artifact_dir: str | os.PathLike[str], record: StepRecord) -> Path:
    return atomic_write_text(ArtifactDir(artifact_dir).record(record.name), record.to_json())


def _load(path: Path) -> StepRecord | None:
    try:
        return StepRecord(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def read(artifact_dir: str | os.PathLike[str], name: str) -> StepRecord | None:
    """One step's record, or None when it is missing or unreadable."""
    return _load(ArtifactDir(artifact_dir).record(name))


def read_all(artifact_dir: str | os.PathLike[str]) -> list[StepRecord]:
    """Every readable record in the dir, oldest first; unreadable ones are skipped."""
    folder = ArtifactDir(artifact_dir).records
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    records = [r for r in map(_load, paths) if r is not None]
    return sorted(records, key=lambda r: r.started_at or "")
