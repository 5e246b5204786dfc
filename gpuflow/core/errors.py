"""The one exception hierarchy of gpuflow; each class carries its exit code.

`failure` is the one place that turns an exception into an exit code, a
one-line message and the details for the step record; the step harness
(`gpuflow.core.step`) uses it for a step's CLI and for `gpuflow run` alike.
Nothing below a CLI's `main` calls `sys.exit`.
"""
from __future__ import annotations

import errno
import traceback as _traceback
from dataclasses import dataclass, field
from typing import Any

SUCCESS = 0
INTERNAL = 70  # a bug in gpuflow itself (sysexits' EX_SOFTWARE); traceback is logged


class GpuflowError(Exception):
    """Base class: an expected failure with a one-line message.

    `details` lands in the step's record (counts, paths, the failing cell);
    `result` is the step's own result as far as it got (execute: the
    `ExecuteResult` of the saved partial notebook), for library callers."""

    exit_code: int = 1

    def __init__(self, *args: object, details: dict[str, Any] | None = None, result: object = None) -> None:
        super().__init__(*args)
        self.details: dict[str, Any] = dict(details or {})
        self.result: object = result


# -- 1: the step's own work failed ------------------------------------------
class StepFailed(GpuflowError):
    exit_code = 1


class CellError(StepFailed):
    """A notebook cell raised."""


class TestsFailed(StepFailed):
    """pytest ran and some tests failed."""


# -- 2: bad usage or bad input; nothing was executed --------------------------
class UsageError(GpuflowError):
    exit_code = 2


class InputError(UsageError):
    """A missing, unreadable or invalid input file."""


class ConfigError(UsageError):
    """A bad configuration file, variable or flag combination."""


class UnsafePathError(UsageError):
    """A path that would escape the directory it must stay in."""


# -- 3: infrastructure failed after retries ----------------------------------
class InfraError(GpuflowError):
    exit_code = 3


class CloneError(InfraError):
    pass


class DownloadError(InfraError):
    pass


class ChecksumError(DownloadError):
    pass


class AuthError(InfraError):
    pass


# -- 4: a GPU was required but none is visible ---------------------------------
class NoGPUError(GpuflowError):
    exit_code = 4


# -- 5: pytest collected no tests ----------------------------------------------
class NoTestsCollected(GpuflowError):
    exit_code = 5


# -- 124: a cell or the whole notebook timed out --------------------------------
class StepTimeout(GpuflowError):
    exit_code = 124


class CellTimeout(StepTimeout):
    pass


class NotebookTimeout(StepTimeout):
    pass


# -- 137: the kernel died (killed, or out of memory) ----------------------------
class KernelDied(GpuflowError):
    exit_code = 137


# -- 130 / 143: stopped by a signal, after saving what it had -------------------
# BaseException, like KeyboardInterrupt, so that library code that catches
# `Exception` (nbclient, papermill) cannot swallow the request to stop.
class Stopped(BaseException):
    exit_code: int = 143

    def __init__(self, message: str = "", *, signum: int = 15, details: dict[str, Any] | None = None,
                 result: object = None) -> None:
        super().__init__(message or f"stopped by signal {signum}")
        self.signum = signum
        self.details: dict[str, Any] = dict(details or {})
        self.result: object = result


class Terminated(Stopped):
    exit_code = 143


class Interrupted(Stopped):
    exit_code = 130


# Every exit code, in order of severity (the least severe first): `worst`
# ranks by this order, and README's table lists the same codes. Severity is
# not numeric order: a stop by signal outranks a bug, which outranks a dead
# kernel, a timeout, a missing GPU, infrastructure, usage and failed tests.
EXIT_CODES: dict[int, str] = {
    0: "success",
    5: "pytest collected no tests",
    1: "the step's own work failed: a cell raised, or tests failed",
    2: "bad usage or bad input; nothing was executed",
    3: "infrastructure failed after retries: network, clone, download, auth; a full disk",
    4: "a GPU was required but none is visible",
    124: "timed out: a cell or the whole notebook",
    137: "the kernel died: killed, or out of memory",
    70: "internal error in gpuflow (a bug): the traceback is in the log",
    130: "interrupted (Ctrl-C), after saving what it had",
    143: "terminated by SIGTERM, after saving what it had",
}
_RANK = {code: i for i, code in enumerate(EXIT_CODES)}


# A full disk or quota is the machine's fault, not a bug (EFBIG: a file-size
# limit, as RLIMIT_FSIZE or a filesystem's largest file sets it).
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@dataclass(frozen=True)
class Failure:
    """What an exception means for a step: its exit code, one line for a
    person (without the step's name), the details for its record, and the
    traceback, which only a bug (exit 70) carries."""

    code: int
    line: str
    details: dict[str, Any] = field(default_factory=dict)
    traceback: str | None = None


def failure(exc: BaseException) -> Failure:
    """The one mapping from an exception to a step's outcome."""
    if isinstance(exc, (GpuflowError, Stopped)):
        return Failure(exc.exit_code, first_line(exc), dict(exc.details))
    if isinstance(exc, KeyboardInterrupt):
        return Failure(Interrupted.exit_code, first_line(exc))
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return Failure(InfraError.exit_code, f"disk full while writing: {exc}")
    return Failure(INTERNAL, first_line(exc), traceback="".join(_traceback.format_exception(exc)))


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only; its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def exit_code_for(exc: BaseException) -> int:
    """The exit code of an exception under gpuflow's taxonomy."""
    return failure(exc).code


def worst(codes: list[int] | tuple[int, ...]) -> int:
    """Combine step exit codes into one: the most severe one wins (an
    unknown code, such as a child's 128 + signal, outranks them all)."""
    return max(codes, key=lambda c: _RANK.get(c, len(_RANK)), default=0)


class CommandError(GpuflowError):
    """A child process failed; carries what is needed to read why."""

    def __init__(
        self, message: str, *, cmd: tuple[str, ...] = (), returncode: int = 1,
        stdout: str = "", stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.cmd = cmd
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def report(self) -> str:
        def indent(text: str) -> str:
            return "\n".join("    " + line for line in text.rstrip().splitlines()) or "    (none)"

        return (
            f"command: {' '.join(self.cmd)}\nreturn code: {self.returncode}\n"
            f"stdout:\n{indent(self.stdout)}\nstderr:\n{indent(self.stderr)}"
        )
