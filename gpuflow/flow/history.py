"""What each notebook was measured to need, kept between runs: its peak
device memory, its RMM peak and its duration, in one JSON file in the cache
directory (`gpuflow.core.cachedir`), keyed by the notebook's path and the
digest of what ran (its bytes, profile and parameters). `gpuflow run --pack`
packs notebooks onto GPUs by these numbers.

Every run writes it, many runs may share it: a writer holds an flock on a
sibling lock file while it reads, merges and atomically replaces the file,
so concurrent runs neither corrupt it nor lose each other's entries.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuflow.core import artifacts
from gpuflow.core.cachedir import cache_dir
from gpuflow.core.fsutil import atomic_write_text
from gpuflow.core.log import log
from gpuflow.core.record import utc_now

if TYPE_CHECKING:
    from gpuflow.flow.config import FlowConfig

KEEP_PER_NOTEBOOK = 5  # digests kept per path: an edited notebook's old numbers age out
VERSION = 1


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One notebook's numbers. `device_peak_bytes` is NVML's memory in use on
    the device (telemetry.json `peak_memory_bytes`); it is only the
    notebook's own when it ran alone, so a packed run keeps the last
    alone-measured value. `rmm_peak_bytes` bounds what the notebook held
    through RMM at once: the sum of its cells' peaks (telemetry.json
    `cells[].peak_bytes`). Each cell's counter starts at zero, so what an
    earlier cell kept is not in a later cell's peak; every byte live at the
    notebook's peak is counted in the peak of the cell that allocated it, so
    the sum is never below the notebook's peak."""

    device_peak_bytes: int | None = None
    rmm_peak_bytes: int | None = None
    duration_s: float | None = None
    memory_total_bytes: int | None = None
    packed: bool = False
    recorded_at: str | None = None


def key_for(cfg: FlowConfig, notebook: Path, rel: str) -> tuple[str, str]:
    """(path, digest): the notebook's path in its repo, and the digest of what
    runs (its bytes, profile and parameters: a lite run needs less)."""
    from gpuflow.flow.config import notebook_parameters
    from gpuflow.flow.resume import digest

    return rel, digest(notebook, cfg.profile, notebook_parameters(cfg),
                       cfg.max_cells if cfg.lite else None, cfg.max_genes if cfg.lite else None)


def path() -> Path:
    return cache_dir() / artifacts.HISTORY_JSON


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def from_telemetry(telemetry: Path, duration_s: float | None, *, packed: bool) -> Measurement:
    """The numbers of one execute, from its telemetry.json (absent: duration only)."""
    try:
        data = json.loads(telemetry.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    cells = [c for c in data.get("cells") or [] if isinstance(c, dict)]
    rmm = [p for p in (_int(c.get("peak_bytes")) for c in cells) if p is not None]
    return Measurement(device_peak_bytes=_int(data.get("peak_memory_bytes")), rmm_peak_bytes=sum(rmm) if rmm else None,
                       duration_s=round(duration_s, 3) if duration_s is not None else None,
                       memory_total_bytes=_int(data.get("memory_total")), packed=packed, recorded_at=utc_now())


def _load(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": VERSION, "notebooks": {}}
    except (OSError, ValueError) as exc:
        log.warning(f"{file}: unreadable notebook history ({exc}); starting a new one")
        return {"version": VERSION, "notebooks": {}}
    if not isinstance(data, dict) or not isinstance(data.get("notebooks"), dict):
        return {"version": VERSION, "notebooks": {}}
    return data


def _measurement(raw: Any) -> Measurement | None:
    if not isinstance(raw, dict):
        return None
    return Measurement(device_peak_bytes=_int(raw.get("device_peak_bytes")), rmm_peak_bytes=_int(raw.get("rmm_peak_bytes")),
                       duration_s=float(raw["duration_s"]) if _int(raw.get("duration_s")) is not None else None,
                       memory_total_bytes=_int(raw.get("memory_total_bytes")), packed=raw.get("packed") is True,
                       recorded_at=raw.get("recorded_at") if isinstance(raw.get("recorded_at"), str) else None)


def lookup(key: str, digest: str, file: Path | None = None) -> Measurement | None:
    """The numbers recorded for this notebook at this digest, or None."""
    entries = _load(file or path())["notebooks"].get(key)
    return _measurement(entries.get(digest)) if isinstance(entries, dict) else None


def lookup_all(keys: Mapping[str, str], file: Path | None = None) -> dict[str, Measurement | None]:
    """{key: measurement} for {key: digest}, reading the file once."""
    notebooks = _load(file or path())["notebooks"]
    found: dict[str, Measurement | None] = {}
    for key, digest in keys.items():
        entries = notebooks.get(key)
        found[key] = _measurement(entries.get(digest)) if isinstance(entries, dict) else None
    return found


@contextlib.contextmanager
def _locked(file: Path) -> Iterator[None]:
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file.with_name(file.name + artifacts.LOCK), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def merge(old: Measurement | None, new: Measurement) -> Measurement:
    """A packed run's device peak counts its neighbours' memory too: keep the
    alone-measured one. A value the new run could not measure keeps the old."""
    if old is None:
        return new if not new.packed else Measurement(**{**asdict(new), "device_peak_bytes": None})
    device = old.device_peak_bytes if new.packed or new.device_peak_bytes is None else new.device_peak_bytes
    return Measurement(
        device_peak_bytes=device,
        rmm_peak_bytes=new.rmm_peak_bytes if new.rmm_peak_bytes is not None else old.rmm_peak_bytes,
        duration_s=new.duration_s if new.duration_s is not None else old.duration_s,
        memory_total_bytes=new.memory_total_bytes or old.memory_total_bytes,
        packed=new.packed, recorded_at=new.recorded_at,
    )


def record(key: str, digest: str, measured: Measurement, file: Path | None = None) -> Measurement:
    """Merge `measured` into the history under the lock; returns what is stored."""
    file = file or path()
    with _locked(file):
        data = _load(file)
        entries = data["notebooks"].setdefault(key, {})
        if not isinstance(entries, dict):
            entries = data["notebooks"][key] = {}
        stored = merge(_measurement(entries.pop(digest, None)), measured)
        entries[digest] = asdict(stored)  # last in, newest: the oldest digests age out first
        for old in list(entries)[:-KEEP_PER_NOTEBOOK]:
            del entries[old]
        data["version"] = VERSION
        atomic_write_text(file, json.dumps(data, indent=1, sort_keys=False) + "\n")
    return stored
