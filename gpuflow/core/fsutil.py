"""File helpers every step shares: atomic writes, path containment, hashing."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gpuflow.core.errors import InputError, UnsafePathError


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `dest`; on success it replaces `dest` in one
    rename, on failure it is removed. A reader never sees half a file, and a
    failed write (disk full) leaves the previous `dest` intact."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise InputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(dest)


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(dest, text.encode("utf-8"))


def write_results(directory: str | os.PathLike[str], results: dict[str, str]) -> None:
    """Tekton result files: one per name, no trailing newline (like printf %s)."""
    for name, value in results.items():
        atomic_write_text(Path(directory) / name, value)


def contained(base: str | os.PathLike[str], relative: str | os.PathLike[str]) -> Path:
    """`base/relative`, refusing absolute paths, `..` and symlinks that leave `base`."""
    rel = Path(relative)
    if rel.is_absolute() or not str(relative).strip():
        raise UnsafePathError(f"{str(relative)!r} must be a relative path inside {base}")
    if ".." in rel.parts:
        raise UnsafePathError(f"{str(relative)!r} escapes {base}")
    base_real = Path(base).resolve()
    target = (Path(base) / rel).resolve()
    if target != base_real and base_real not in target.parents:
        raise UnsafePathError(f"{str(relative)!r} resolves outside {base} (through a symlink?)")
    return Path(base) / rel


def clear_contents(directory: str | os.PathLike[str]) -> None:
    """Delete what is inside `directory`, never the directory itself (it may be
    a mount point) and never anything a symlink inside it points to."""
    directory = Path(directory)
    for entry in directory.iterdir():
        if entry.is_symlink() or not entry.is_dir():
            entry.unlink()
        else:
            shutil.rmtree(entry)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
