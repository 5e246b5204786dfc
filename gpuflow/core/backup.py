"""Set an existing directory aside before it is replaced, and put it back if
the replacement fails, so a failed step leaves the directory as it found it.

A volume root (a Tekton workspace, any mount point) is never moved or deleted
itself: only its contents are, because the mount cannot be renamed away and
removing it would leave the step writing into the container's own filesystem.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gpuflow.core.errors import UnsafePathError
from gpuflow.core.fsutil import clear_contents
from gpuflow.core.log import log

_STAMP = "%Y%m%dT%H%M%SZ"
_STAMP_RE = re.compile(r"_backup_(\d{8}T\d{6}Z)(?:_\d+)?$")


@dataclass(frozen=True, kw_only=True)
class SetAside:
    """What `set_aside` did to `dest`, so that `restore` can undo it."""

    dest: Path
    existed: bool
    backup: Path | None  # None: nothing kept (it was empty, absent, or deleted)
    contents_only: bool


def is_volume_root(path: Path) -> bool:
    return os.path.ismount(path)


def refuse_unsafe(dest: Path, keep: Sequence[Path] = ()) -> None:
    """Refuse to replace /, $HOME or any directory holding it, or the cwd or
    any directory holding it: those are never what a clone should replace.
    `keep`: the step's own output dirs, which a clone must not swallow either."""
    target = dest.resolve()
    home = os.environ.get("HOME")  # not Path.home(): a container's arbitrary UID may have no passwd entry
    guarded = [Path("/"), Path.cwd().resolve(), *([Path(home).resolve()] if home else []),
               *(Path(k).resolve() for k in keep)]
    for held in guarded:
        if target == held or target in held.parents:
            raise UnsafePathError(f"refusing to replace {dest}: it is or holds {held}")


def set_aside(dest: Path, *, keep: bool, now: _dt.datetime | None = None) -> SetAside:
    """Move `dest` to `<dest>_backup_<UTC stamp>` (keep=True) or delete it,
    leaving `dest` absent, or empty when it is a volume root."""
    contents_only = dest.is_dir() and is_volume_root(dest)
    if not dest.exists() and not dest.is_symlink():
        return SetAside(dest=dest, existed=False, backup=None, contents_only=False)
    if dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir()):
        return SetAside(dest=dest, existed=True, backup=None, contents_only=True)
    if not keep:
        wipe(dest)
        return SetAside(dest=dest, existed=True, backup=None, contents_only=contents_only)
    backup = _free_name(dest, now or _dt.datetime.now(_dt.timezone.utc))
    if contents_only:
        backup.mkdir()
        _move_entries(dest, backup)
    else:
        os.replace(dest, backup)
    log.info(f"moved existing {dest} to {backup}")
    return SetAside(dest=dest, existed=True, backup=backup, contents_only=contents_only)


def wipe(dest: Path) -> None:
    """Remove whatever is at `dest` (a partial clone); a volume root is emptied."""
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.is_dir():
        if is_volume_root(dest):
            clear_contents(dest)
        else:
            shutil.rmtree(dest)


def restore(aside: SetAside) -> None:
    """Undo `set_aside` after a failure: `dest` is as it was before."""
    dest = aside.dest
    if dest.exists() or dest.is_symlink():
        wipe(dest)
    if aside.backup is not None:
        if aside.contents_only:
            _move_entries(aside.backup, dest)
            aside.backup.rmdir()
        else:
            os.replace(aside.backup, dest)
        log.info(f"restored {dest} from {aside.backup}")
    elif aside.existed:
        dest.mkdir(parents=True, exist_ok=True)


def prune(dest: Path, *, keep: int | None, max_age_days: float | None,
          now: _dt.datetime | None = None) -> list[Path]:
    """Delete old `<dest>_backup_*` siblings: all but the newest `keep`, and
    all older than `max_age_days`. Returns what was deleted."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    dated = sorted(((_stamp_of(p), p) for p in backups_of(dest)), reverse=True)
    doomed = [p for i, (_, p) in enumerate(dated) if keep is not None and i >= keep]
    if max_age_days is not None:
        cutoff = now - _dt.timedelta(days=max_age_days)
        doomed += [p for when, p in dated if when < cutoff and p not in doomed]
    for path in doomed:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        log.info(f"pruned old backup {path}")
    return doomed


def backups_of(dest: Path) -> list[Path]:
    if not dest.parent.is_dir():
        return []
    return [p for p in dest.parent.glob(f"{glob_escape(dest.name)}_backup_*") if _STAMP_RE.search(p.name)]


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _stamp_of(path: Path) -> _dt.datetime:
    match = _STAMP_RE.search(path.name)
    assert match is not None  # backups_of only lists names that match
    return _dt.datetime.strptime(match.group(1), _STAMP).replace(tzinfo=_dt.timezone.utc)


def _free_name(dest: Path, now: _dt.datetime) -> Path:
    base = dest.with_name(f"{dest.name}_backup_{now.strftime(_STAMP)}")
    candidate, n = base, 0
    while candidate.exists() or candidate.is_symlink():  # two clones in one second
        n += 1
        candidate = base.with_name(f"{base.name}_{n}")
    return candidate


def _move_entries(source: Path, target: Path) -> None:
    for entry in source.iterdir():
        shutil.move(str(entry), str(target / entry.name))
