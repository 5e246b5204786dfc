"""The one subprocess helper. No other gpuflow module imports `subprocess`."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gpuflow.core.errors import CommandError, UsageError
from gpuflow.core.log import log, redact


@dataclass(frozen=True)
class Completed:
    cmd: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


# Linux's prctl, looked up once before any fork: the child only calls it.
_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
    _prctl = None

# File descriptors every child keeps open: `gpuflow run` puts its run lock
# here, so the lock is held until the last child is gone and a resumed run
# can never start beside an orphan of the one before.
_held_fds: set[int] = set()


@contextlib.contextmanager
def held_by_children(fd: int) -> Iterator[None]:
    _held_fds.add(fd)
    try:
        yield
    finally:
        _held_fds.discard(fd)


def _die_with_parent(parent: int) -> None:
    # Runs in the child between fork and exec. Each child has its own session
    # (so that one killpg stops its grandchildren), so a kill -9 of our process
    # group never reaches it: the kernel sends SIGTERM when we die instead,
    # which gpuflow's steps answer by stopping their kernels and saving.
    # Linux ties this signal to the thread that forked, not the process:
    # `call` waits for its child in that very thread, so the thread cannot end
    # (and fire the signal) while the child still runs.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # we died before the prctl took effect
        os._exit(128 + signal.SIGTERM)


# Children alive right now, so that `gpuflow run` can pass a Ctrl-C or SIGTERM
# on to kernels and pytest started from worker threads (which get no signals).
_live: dict[int, subprocess.Popen[str]] = {}
_live_lock = threading.Lock()


def signal_all(sig: int = signal.SIGTERM) -> int:
    """Send `sig` to the process group of every running child; returns how many."""
    with _live_lock:
        procs = list(_live.values())
    for child in procs:
        kill_group(child, sig)
    return len(procs)


def which(program: str, path: str | None = None) -> str | None:
    return shutil.which(program, path=path)


def quote(cmd: Sequence[str]) -> str:
    return redact(" ".join(shlex.quote(str(a)) for a in cmd))


def call(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    input: str | None = None,
    echo: bool = True,
    on_line: Callable[[str], None] | None = None,
    tee: IO[str] | None = None,
) -> Completed:
    """Run a command, capture its output, and kill its whole process group on
    timeout or interruption so nothing outlives the step.

    `on_line`/`tee` receive stdout+stderr merged, line by line, as it arrives
    (for live logs); the result then has everything in `stdout`.
    """
    args = tuple(str(a) for a in cmd)
    exe = which(args[0], path=(env or os.environ).get("PATH")) if os.sep not in args[0] else args[0]
    if exe is None:
        raise UsageError(f"{args[0]!r} not found on PATH; is it installed?")
    if echo:
        log.debug(f"+ {quote(args)}")
    streaming = on_line is not None or tee is not None
    proc = subprocess.Popen(
        (exe, *args[1:]),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if streaming else subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # own process group: one killpg reaches grandchildren
        preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        pass_fds=tuple(_held_fds),
    )
    with _live_lock:
        _live[proc.pid] = proc
    try:
        if streaming:
            out, err = _pump(proc, input, on_line, tee, timeout), ""
        else:
            out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = _drain(proc)
        raise CommandError(
            f"{Path(args[0]).name} timed out after {timeout:.0f}s",
            cmd=tuple(redact(a) for a in args), returncode=124, stdout=redact(out), stderr=redact(err),
        ) from None
    except BaseException:
        kill_group(proc)
        raise
    finally:
        with _live_lock:
            _live.pop(proc.pid, None)
    result = Completed(args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise CommandError(
            f"{Path(args[0]).name} exited with {proc.returncode}",
            cmd=tuple(redact(a) for a in args), returncode=proc.returncode,
            stdout=redact(out), stderr=redact(err),
        )
    return result


def _pump(
    proc: subprocess.Popen[str], input: str | None,
    on_line: Callable[[str], None] | None, tee: IO[str] | None, timeout: float | None,
) -> str:
    chunks: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            chunks.append(line)
            if tee is not None:
                tee.write(line)
                tee.flush()
            if on_line is not None:
                on_line(line)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    if input is not None and proc.stdin is not None:
        proc.stdin.write(input)
        proc.stdin.close()
    proc.wait(timeout=timeout)
    thread.join()
    return "".join(chunks)


def _drain(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError):
        return "", ""
    return out or "", err or ""


def kill_group(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
