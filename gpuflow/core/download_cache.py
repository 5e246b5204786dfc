"""A content cache of verified downloads: one file per URL (and checksum),
with a sidecar recording its SHA-256 so that a hit can always be verified."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

from gpuflow.core.errors import InputError
from gpuflow.core.fsutil import atomic_path, atomic_write_text
from gpuflow.core.log import log, redact


def entry_for(cache_dir: Path, url: str, checksum: str | None) -> Path:
    key = hashlib.sha256(f"{url}\n{checksum or ''}".encode()).hexdigest()[:24]
    name = Path(urllib.parse.urlsplit(url).path).name or "download"
    return Path(cache_dir) / f"{key}-{name}"


def recorded_sha256(entry: Path) -> str | None:
    value = read_json(sidecar(entry)).get("sha256")
    return value if isinstance(value, str) else None


def store(source: Path, entry: Path, url: str, sha256: str) -> None:
    """Put a verified file into the cache; a cache that cannot be written is
    only worth a warning, never a failed step."""
    try:
        link_or_copy(source, entry)
        atomic_write_text(sidecar(entry), json.dumps({"url": redact(url), "sha256": sha256}))
    except (OSError, InputError) as exc:
        log.warning(f"could not store {source} in the cache: {exc}")


def evict(entry: Path) -> None:
    entry.unlink(missing_ok=True)
    sidecar(entry).unlink(missing_ok=True)


def link_or_copy(source: Path, target: Path) -> None:
    """Atomically make `target` a hard link to `source` (a copy across filesystems)."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)  # no second copy of a multi-GB file when both are on one filesystem
        except OSError:
            shutil.copyfile(source, tmp)


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
