"""The papermill log of one execution: to `--log FILE` and to stderr at once
(what `2>&1 | tee papermill.log` did), redacted, one logger per run so that
concurrent runs in threads do not mix their lines. The file gets every line
at the chosen level; stderr only what a person reads (INFO and up, less the
cell markers: FILE_ONLY)."""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from gpuflow.core.errors import InputError
from gpuflow.core.log import log, redact


class _Tee:
    """A text stream for tqdm: the file and stderr (looked up at write time)."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh

    def write(self, text: str) -> int:
        self.fh.write(redact(text))
        with suppress(OSError):  # stderr's reader is gone: the file still gets it
            sys.stderr.write(text)
        return len(text)

    def flush(self) -> None:
        self.fh.flush()
        with suppress(OSError):
            sys.stderr.flush()


FILE_ONLY = {"console": False}  # `extra=` for a line that belongs in the file alone


class _Handler(logging.Handler):
    def __init__(self, fh: IO[str]) -> None:
        super().__init__()
        self.fh = fh

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a bad %-format in a library's message must not stop the run
            text = str(record.msg)
        self.fh.write(redact(text.rstrip("\n")) + "\n")
        self.fh.flush()
        # the console gets the cells' own output, warnings and progress; the
        # bookkeeping (cell markers, kernel message dumps) stays in the file
        if record.levelno >= logging.INFO and getattr(record, "console", True):
            log.raw(text)


@contextmanager
def run_logger(path: Path, level: str, progress_bar: bool) -> Iterator[tuple[logging.Logger, Any]]:
    """(logger for papermill/nbclient, tqdm kwargs or None)."""
    try:
        fh = open(path, "w", encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"cannot write log {path}: {exc.strerror or exc}") from None
    # not logging.getLogger: a registered logger is global, and runs may be concurrent
    logger = logging.Logger("papermill", level=getattr(logging, level))
    logger.addHandler(_Handler(fh))
    bar = {"file": _Tee(fh), "mininterval": 1.0, "ascii": True} if progress_bar else None
    try:
        yield logger, bar
    finally:
        fh.close()
