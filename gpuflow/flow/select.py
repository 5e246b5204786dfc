"""Which notebooks of a suite run: `exclude` globs, a notebook's own
`gpuflow` metadata (`skip`, `run_types`) and RAPIDS' `SKIP_CI_TESTING`
marker files.

A notebook removed by `exclude` is not part of the run at all; a skipped one
is listed, with its reason, and never fails the run.
"""
from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gpuflow.core.errors import ConfigError

# RAPIDS' convention, kept as is: this file in a folder skips every notebook under it
SKIP_MARKER = "SKIP_CI_TESTING"
RUN_TYPES = ("ci", "nightly", "weekly")
METADATA_KEY = "gpuflow"


def excluded(rel: str, patterns: Iterable[str]) -> bool:
    """`rel` (a path relative to the notebook repo) matches one of the
    `exclude` globs; `*` also crosses folders, as in `*MNMG*`."""
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(Path(rel).name, p) for p in patterns)


def metadata(notebook: Path) -> dict[str, Any]:
    """The notebook's `metadata.gpuflow` table; {} when it has none. An
    unreadable notebook has none here: executing it reports the problem."""
    try:
        data = json.loads(notebook.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    meta = data.get("metadata") if isinstance(data, dict) else None
    table = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f"{notebook.name}: metadata `{METADATA_KEY}` must be a table, not {table!r}")
    return table


def run_types(meta: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """The run types a notebook runs in (all of them when it does not say)."""
    raw = meta.get("run_types")
    if raw is None:
        return RUN_TYPES
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not all(isinstance(v, str) and v in RUN_TYPES for v in values):
        raise ConfigError(f"{where}: metadata `{METADATA_KEY}.run_types` must list some of "
                          f"{', '.join(RUN_TYPES)}, not {raw!r}")
    return tuple(values)


def marker_folder(notebook: Path, repo_dir: Path) -> Path | None:
    """The nearest folder, from the notebook's own up to the repo root, that holds a SKIP_CI_TESTING file."""
    folder = notebook.parent
    root = repo_dir.resolve()
    while True:
        if (folder / SKIP_MARKER).is_file():
            return folder
        if folder.resolve() == root or folder.parent == folder:
            return None
        folder = folder.parent


def skip_reason(notebook: Path, rel: str, repo_dir: Path, meta: Mapping[str, Any], run_type: str) -> str | None:
    """Why this notebook is skipped in a `run_type` run, or None when it runs."""
    folder = marker_folder(notebook, repo_dir)
    if folder is not None:
        where = folder.resolve().relative_to(repo_dir.resolve()).as_posix()
        return f"{SKIP_MARKER} in {'the repo root' if where == '.' else where + '/'}"
    skip = meta.get("skip")
    if skip:
        return str(skip) if isinstance(skip, str) else "skipped by its metadata"
    allowed = run_types(meta, rel)
    if run_type not in allowed:
        return f"runs in {' and '.join(allowed)} runs only; this is a {run_type} run"
    return None
