"""Resume: which steps of an earlier run can be kept.

A step is kept when its record says it succeeded, the digest of its inputs
(notebook bytes, parameters, the config that matters to it) is the one it
recorded, and every output it recorded still exists. Everything else is redone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuflow.core import record
from gpuflow.core.artifacts import ArtifactDir
from gpuflow.core.fsutil import atomic_write_text, sha256_file


def digest(*parts: Any) -> str:
    """sha256 of JSON-able parts; a Path part contributes its file's bytes."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(sha256_file(part).encode() if part.is_file() else b"<missing>")
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class StepCache:
    artifact_dir: Path
    enabled: bool

    def fresh(self, step: str, inputs: str, outputs: list[Path]) -> bool:
        if not self.enabled:
            return False
        rec = record.read(self.artifact_dir, step)
        recorded = rec.view(record.ResumeDetails).inputs_sha256 if rec is not None else None
        if recorded is None and rec is not None:
            recorded = self._intent(step).read_text(encoding="utf-8") if self._intent(step).is_file() else None
        return (
            rec is not None and rec.exit_code == 0 and rec.status == "success"
            and recorded == inputs and all(p.exists() for p in outputs)
        )

    def intend(self, step: str, inputs: str) -> None:
        """Note the inputs before a step CLI runs, and drop its old record: a
        run that dies after the CLI recorded success but before `stamp` still
        knows which inputs that success was for."""
        ArtifactDir(self.artifact_dir).record(step).unlink(missing_ok=True)
        atomic_write_text(self._intent(step), inputs)

    def _intent(self, step: str) -> Path:
        return ArtifactDir(self.artifact_dir).record_intent(step)

    def stamp(self, step: str, inputs: str, outputs: list[Path]) -> None:
        """Add the inputs digest and outputs to a record a step CLI wrote."""
        rec = record.read(self.artifact_dir, step)
        if rec is None:
            return
        record.write(self.artifact_dir, dataclasses.replace(rec, details=stamped(rec.details, inputs, outputs)))


def stamped(details: dict[str, Any], inputs: str, outputs: Sequence[Path]) -> dict[str, Any]:
    """A step's details plus what `fresh` checks: its inputs digest and its outputs."""
    stamp = record.ResumeDetails(inputs_sha256=inputs, outputs=tuple(str(p) for p in outputs))
    return {**details, **dataclasses.asdict(stamp)}
