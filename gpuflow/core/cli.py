"""What every step CLI shares: common flags, signal handling, and the one
place where exceptions become exit codes and one-line messages."""
from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from gpuflow.core import errors, record
from gpuflow.core.log import FORMATS, log, redact


@dataclass
class Outcome:
    """What a step's `impl` may return instead of a bare exit code, so that
    its step record carries details (counts, paths) for the summary."""

    exit_code: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


Impl = Callable[[argparse.Namespace], "int | Outcome"]


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    g = p.add_argument_group("logging")
    g.add_argument(
        "--log-format", choices=FORMATS, default="auto",
        help="auto: GitHub Actions folds when GITHUB_ACTIONS=true, else plain timestamped lines",
    )
    g.add_argument("--debug", action="store_true", help="verbose logs and tracebacks")
    g.add_argument(
        "--record-dir", type=Path, default=None,
        help="write this step's JSON record under DIR/steps/ (default: the step's output dir)",
    )
    return p


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM (Tekton's timeout, `docker stop`) raises `Terminated` in the main
    thread, so the step unwinds through its `finally` blocks and saves what it
    has, instead of dying with nothing written."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise errors.Terminated(f"terminated by signal {signum}", signum=signum)

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave signals to the caller
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fail_line(prog: str, exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(f"{prog}: {message}")


def run_cli(
    prog: str,
    p: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    impl: Impl,
    *,
    step: str | None = None,
    record_dir: Callable[[argparse.Namespace], Path | None] | None = None,
) -> int:
    """Parse, run `impl`, and map whatever happens to an exit code."""
    if hasattr(sys.stdout, "reconfigure"):
        # keep our lines and child output in order in CI logs
        sys.stdout.reconfigure(line_buffering=True)
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, bad usage is 2
        return int(exc.code or 0)
    log.configure(args.log_format, prefix=prog, debug=args.debug)
    started, t0 = record.utc_now(), time.monotonic()
    outcome = Outcome()
    try:
        with signals_raise():
            result = impl(args)
        outcome = result if isinstance(result, Outcome) else Outcome(exit_code=int(result))
    except (errors.GpuflowError, errors.Stopped, KeyboardInterrupt) as exc:
        outcome = Outcome(exit_code=errors.exit_code_for(exc), error=fail_line(prog, exc),
                          details=dict(getattr(exc, "details", None) or {}))
        if isinstance(exc, errors.CommandError) and args.debug:
            print(redact(exc.report()), file=sys.stderr)
        if args.debug:
            traceback.print_exc()
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            # a full disk or quota is the machine's fault, not a bug: one line, exit 3
            full = errors.InfraError(f"disk full while writing: {exc}")
            outcome = Outcome(exit_code=full.exit_code, error=fail_line(prog, full))
        else:  # a bug: say so, with the traceback
            outcome = Outcome(exit_code=errors.INTERNAL, error=fail_line(prog, exc))
            traceback.print_exc()
    if outcome.error:
        if log.format == "plain":  # the one line a person or a grep looks for
            print(outcome.error, file=sys.stderr, flush=True)
        else:
            log.error(outcome.error.split(": ", 1)[-1])
    directory = record_dir(args) if record_dir is not None else getattr(args, "record_dir", None)
    if step and directory is not None:
        _write_record(step, directory, outcome, started, time.monotonic() - t0)
    return outcome.exit_code


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _write_record(step: str, directory: Path, outcome: Outcome, started: str, took: float) -> None:
    rec = record.finished(step, outcome.exit_code, took, error=outcome.error, details=outcome.details,
                          started_at=started)
    try:
        record.write(directory, rec)
    except (OSError, errors.GpuflowError) as exc:
        log.warning(f"could not write step record in {directory}: {exc}")
