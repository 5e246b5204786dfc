"""What every step CLI shares: the common flags, SIGTERM as an exception,
and how a failure is told: one line on stderr, after the traceback of a bug.

A step's CLI is `Step.main` (`gpuflow.core.step`); which exit code an
exception means is `errors.failure`'s to say.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from gpuflow.core import errors
from gpuflow.core.log import FORMATS, log, redact


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, where there is one to show: an
    option whose default is "not given" (None, False, empty) says nothing,
    and one whose help already names its default is left as it is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, [], (), "") or "default" in text:
            return text
        return super()._get_help_string(action)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                formatter_class=HelpFormatter)
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


def fail_line(prog: str, failed: errors.Failure) -> str:
    """The one line for a failure: "gpuflow.<step>: <message>", secrets redacted."""
    return redact(f"{prog}: {failed.line}")


def report(line: str | None, failed: errors.Failure | None, exc: BaseException | None) -> None:
    """Tell a person on stderr how a step ended: a bug's traceback (any
    traceback and a child's output under --debug), then the one line."""
    if exc is not None and log.debug_enabled:
        if isinstance(exc, errors.CommandError):
            print(redact(exc.report()), file=sys.stderr)
        if failed is None or failed.traceback is None:
            traceback.print_exception(exc)
    if failed is not None and failed.traceback is not None:
        sys.stderr.write(failed.traceback)
    if line:
        if log.format == "plain":  # the one line a person or a grep looks for
            print(line, file=sys.stderr, flush=True)
        else:
            log.error(line.split(": ", 1)[-1])
