"""Step records: the small JSON file each step leaves in its artifact dir.

`gpuflow.summary` reads them to tell what happened, so the summary is
computed from what the steps recorded, never assumed. Readers see a record's
details through typed views (`ExecuteDetails`, `ConvertDetails`,
`ResumeDetails` here, `report.junit.TestDetails`), all built by
`StepRecord.view`, so a record written by an older gpuflow or edited by hand
never crashes a reader.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from gpuflow.core.artifacts import ArtifactDir
from gpuflow.core.fsutil import atomic_write_text
from gpuflow.core.log import redact

# The one status vocabulary, for step records, notebook results and summaries.
# "kept": --resume kept an earlier success (the record on disk is that success's).
Status = Literal["success", "failed", "skipped", "kept"]
STATUSES: tuple[Status, ...] = typing.get_args(Status)

View = TypeVar("View")


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    name: str
    status: Status
    exit_code: int
    duration_s: float
    error: str | None = None
    started_at: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return redact(json.dumps(dataclasses.asdict(self), indent=2, default=str))

    def view(self, cls: type[View]) -> View:
        """The details as `cls`, a frozen dataclass whose fields all have
        defaults: a missing key or a value of the wrong type reads as the default."""
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            value = self.details.get(f.name)
            kinds = _kinds(hints[f.name])
            if isinstance(value, list) and tuple in kinds:
                value = tuple(value)
            if value is not None and isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
                values[f.name] = value
        return cls(**values)


def _kinds(hint: Any) -> tuple[type, ...]:
    # `int | None` -> (int,); `tuple[str, ...]` -> (tuple,); a float field takes an int too
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
    return (*kinds, int) if float in kinds else kinds


@dataclass(frozen=True, kw_only=True)
class ExecuteDetails:
    """What `gpuflow.execute` records about the notebook it ran."""

    input: str | None = None
    output: str | None = None
    log: str | None = None
    cells: int | None = None
    executed_cells: int | None = None
    failed_cell: int | None = None  # index into the input notebook's cells, from 0
    error: str | None = None
    duration_s: float | None = None

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(p for p in (self.output, self.log) if p)


@dataclass(frozen=True, kw_only=True)
class ConvertDetails:
    """What `gpuflow.convert` records about the HTML it wrote."""

    notebook: str | None = None
    html: str | None = None
    bytes: int | None = None
    log: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(p for p in (self.html, self.log) if p)


@dataclass(frozen=True, kw_only=True)
class SkipDetails:
    """Why a step was deliberately not run."""

    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class ResumeDetails:
    """What `gpuflow run --resume` adds to a record to tell whether it can be kept."""

    inputs_sha256: str | None = None
    outputs: tuple[str, ...] = ()


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def finished(
    name: str, exit_code: int, duration_s: float, *, error: str | None = None,
    details: dict[str, Any] | None = None, started_at: str | None = None, status: Status | None = None,
) -> StepRecord:
    """The record of a step that ended with `exit_code` (status derived unless given)."""
    return StepRecord(
        name=name, status=status or ("success" if exit_code == 0 else "failed"), exit_code=exit_code,
        duration_s=round(duration_s, 3), error=error, started_at=started_at or utc_now(),
        details=dict(details or {}),
    )


def write(artifact_dir: str | os.PathLike[str], record: StepRecord, notebook: str | None = None) -> Path:
    return atomic_write_text(ArtifactDir(artifact_dir).record(record.name, notebook), record.to_json())


def _load(path: Path) -> StepRecord | None:
    try:
        rec = StepRecord(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    # a status outside the vocabulary, or details that are not an object, is not a record we wrote
    return rec if rec.status in STATUSES and isinstance(rec.details, dict) else None


def read(artifact_dir: str | os.PathLike[str], name: str) -> StepRecord | None:
    """One step's record, or None when it is missing or unreadable."""
    return _load(ArtifactDir(artifact_dir).record(name))


def read_all(artifact_dir: str | os.PathLike[str]) -> list[StepRecord]:
    """Every readable record in the dir, oldest first; unreadable ones are skipped."""
    folder = ArtifactDir(artifact_dir).records
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    records = [r for r in map(_load, paths) if r is not None]
    return sorted(records, key=lambda r: r.started_at or "")
