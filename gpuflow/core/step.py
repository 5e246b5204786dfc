"""A step, declared once, and the one harness every step runs through.

Each step module declares a `Step`: its name and description, its
arguments, the library call it makes from parsed arguments, and how that
call's result becomes its record's details. `Step.main` is the step's CLI
(`python -m gpuflow.<step>`, `gpuflow <step>`). `gpuflow run` calls the same
library functions with its own arguments, and both go through `run`, which
does what every step needs, once:

    resume check -> the call -> its result or exception -> record -> cache stamp

An exception becomes an exit code, one line and details through
`errors.failure` and nowhere else. Telling a person is the caller's part: a
CLI prints the line on stderr, `gpuflow run` logs it under the notebook's name.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

from gpuflow.core import cli, errors, proc, record, secrets
from gpuflow.core.log import log, redact

R = TypeVar("R")


@dataclass(frozen=True)
class Verdict:
    """The exit code and one line of a call that returned instead of raising:
    0 and no line for most steps; `summary --exit-code` and `run` pass on the
    code their result carries."""

    exit_code: int = 0
    error: str | None = None


def _record_dir_flag(args: argparse.Namespace) -> Path | None:
    return cast("Path | None", args.record_dir)


def _passed(args: argparse.Namespace, result: object) -> Verdict:
    return Verdict()


@dataclass(frozen=True, kw_only=True)
class Step(Generic[R]):
    """What a step is. `details` is all `gpuflow run` needs of it; a step
    with a CLI adds its description, arguments and call."""

    name: str
    details: Callable[[R], dict[str, Any]]  # the record's details, from the call's result
    description: str = ""
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    call: Callable[[argparse.Namespace], R] | None = None  # the library call, from parsed arguments
    stdout: Callable[[R], object] | None = None  # what the CLI prints for scripts (a path, a commit)
    record_dir: Callable[[argparse.Namespace], Path | None] = _record_dir_flag  # None: no record
    # the notebook the record is named after, in a folder several notebooks share (None: steps/<step>.json)
    record_notebook: Callable[[argparse.Namespace], str | None] = lambda args: None
    verdict: Callable[[argparse.Namespace, R], Verdict] = _passed

    @property
    def prog(self) -> str:
        return f"gpuflow.{self.name}"

    def main(self, argv: Sequence[str] | None = None) -> int:
        """The step's CLI: parse, run through the harness, tell, return the exit code."""
        call, stdout = self.call, self.stdout
        if self.add_arguments is None or call is None:
            raise TypeError(f"step {self.name} has no CLI")
        if hasattr(sys.stdout, "reconfigure"):
            # keep our lines and child output in order in CI logs
            sys.stdout.reconfigure(line_buffering=True)
        p = cli.parser(f"gpuflow {self.name}", self.description)  # usage as people type it
        self.add_arguments(p)
        try:
            args = p.parse_args(argv)
        except SystemExit as exc:  # argparse: --help is 0, bad usage is 2
            return int(exc.code or 0)
        log.configure(args.log_format, prefix=self.prog, debug=args.debug)
        secrets.register()  # a parent's secrets are redacted here too

        def cli_call() -> R:
            with cli.signals_raise():
                result = call(args)
                if stdout is not None:
                    print(stdout(result))
            return result

        ran = run(self, self.record_dir(args), cli_call, verdict=lambda result: self.verdict(args, result),
                  notebook=self.record_notebook(args))
        cli.report(ran.error, ran.failure, ran.exception)
        return ran.exit_code


class Cache(Protocol):
    """What the harness asks of `gpuflow run --resume` (`gpuflow.flow.resume.StepCache`)."""

    def fresh(self, step: str, inputs: str, outputs: list[Path]) -> bool: ...

    def intend(self, step: str, inputs: str) -> None: ...

    def stamp(self, step: str, inputs: str, outputs: list[Path]) -> None: ...


@dataclass(frozen=True)
class Resume:
    """One step's inputs digest and outputs: kept when the cache finds them
    unchanged, stamped into the record after the step ran."""

    cache: Cache
    inputs: str
    outputs: list[Path]


@dataclass(frozen=True, kw_only=True)
class Ran(Generic[R]):
    """What one step came to, with the record it left (none when kept, or
    when it has no record dir); like a future, it holds the call's value or
    the exception it raised (`result()`)."""

    step: str
    status: record.Status
    exit_code: int
    error: str | None = None  # the one line, as recorded: "gpuflow.<step>: <message>"
    record: record.StepRecord | None = None
    failure: errors.Failure | None = None  # set when the step raised in this process
    value: R | None = None
    exception: BaseException | None = None

    def result(self) -> R:
        """The call's value, or raise what it raised."""
        if self.exception is not None:
            raise self.exception
        return cast(R, self.value)


def run(
    step: Step[R], directory: Path | None, call: Callable[[], R], *, resume: Resume | None = None,
    verdict: Callable[[R], Verdict] | None = None, notebook: str | None = None,
) -> Ran[R]:
    """Run `call` as `step`, in this process; record it under `directory`
    (None: no record). Nothing it raises escapes: see `Ran.result`."""
    kept = _kept(step, directory, resume)
    if kept is not None:
        return kept
    started, t0 = record.utc_now(), time.monotonic()
    value: R | None = None
    failed: errors.Failure | None = None
    raised: BaseException | None = None
    try:
        value = call()
        details = step.details(value)
        judged = verdict(value) if verdict is not None else Verdict()
    except (Exception, errors.Stopped, KeyboardInterrupt) as exc:
        failed, raised = errors.failure(exc), exc
        details, judged = failed.details, Verdict(failed.code, cli.fail_line(step.prog, failed))
    rec = record.finished(step.name, judged.exit_code, time.monotonic() - t0, error=judged.error, details=details,
                          started_at=started)
    if directory is not None:
        _write(directory, rec, notebook)
        _stamp(step, directory, resume)
    return Ran(step=step.name, status=rec.status, exit_code=rec.exit_code, error=rec.error,
               record=rec if directory is not None else None, failure=failed, value=value, exception=raised)


def run_child(
    step: Step[Any], directory: Path, spawn: Callable[[], proc.Completed], *, resume: Resume | None = None,
) -> Ran[None]:
    """Run `step` as its own CLI in a child process that `spawn` starts and
    waits for (`gpuflow run`'s execute: one kernel per process). The child
    runs `run` and writes the record; this side keeps, notes the inputs
    first, and records a child that died before it could."""
    kept = _kept(step, directory, resume)
    if kept is not None:
        return kept
    if resume is not None:
        # a run that dies after the child recorded success but before the
        # stamp still knows which inputs that success was for
        resume.cache.intend(step.name, resume.inputs)
    started, t0 = record.utc_now(), time.monotonic()
    try:
        done = spawn()
    except (Exception, errors.Stopped, KeyboardInterrupt) as exc:  # it never ran
        failed = errors.failure(exc)
        rec = record.finished(step.name, failed.code, time.monotonic() - t0, error=cli.fail_line(step.prog, failed),
                              details=failed.details, started_at=started)
        _write(directory, rec)
        return Ran(step=step.name, status=rec.status, exit_code=rec.exit_code, error=rec.error, record=rec,
                   failure=failed, exception=exc)
    found = record.read(directory, step.name)
    if found is None:  # the child died before it could record anything (a signal: 128 + signum)
        died = done.returncode if done.returncode > 0 else 128 - done.returncode
        found = record.finished(step.name, died, time.monotonic() - t0, error=_tail(done.stdout), started_at=started)
        _write(directory, found)
    _stamp(step, directory, resume)
    return Ran(step=step.name, status=found.status, exit_code=found.exit_code, error=found.error, record=found)


def skipped(step: Step[Any], directory: Path, reason: str) -> Ran[None]:
    """Record that `step` was deliberately not run."""
    rec = record.finished(step.name, 0, 0.0, details={"reason": reason}, status="skipped")
    _write(directory, rec)
    return Ran(step=step.name, status=rec.status, exit_code=0, record=rec)


def _kept(step: Step[Any], directory: Path | None, resume: Resume | None) -> Ran[Any] | None:
    if resume is None or directory is None or not resume.cache.fresh(step.name, resume.inputs, resume.outputs):
        return None
    log.info(f"{directory.name}: {step.name} unchanged since the last run, kept (--resume)")
    return Ran(step=step.name, status="kept", exit_code=0)


def _stamp(step: Step[Any], directory: Path, resume: Resume | None) -> None:
    if resume is None:
        return
    try:
        resume.cache.stamp(step.name, resume.inputs, resume.outputs)
    except (OSError, errors.GpuflowError) as exc:  # the step is done; only --resume loses it
        log.warning(f"could not note {step.name}'s inputs in {directory}: {exc}")


def _write(directory: Path, rec: record.StepRecord, notebook: str | None = None) -> None:
    try:
        record.write(directory, rec, notebook)
    except (OSError, errors.GpuflowError) as exc:
        # a full disk must not turn the step's own outcome into a crash
        log.warning(f"could not write step record in {directory}: {redact(str(exc))}")


def _tail(text: str) -> str | None:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None
