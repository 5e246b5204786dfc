"""Real processes for the reliability suite: a `gpuflow` child watched with
psutil (every descendant's pid and argv, kernels found by their cmdline)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import psutil
import pytest

# the real servers and the tiny test repo of the step suites, not copies of them
from tests.flow.conftest import steps_present, test_repo  # noqa: F401
from tests.network.conftest import file_server, git_server, publish  # noqa: F401


@dataclass
class Watched:
    """A `gpuflow ...` child process and everything seen below it."""
    popen: subprocess.Popen[str]
    argv: list[str] = field(default_factory=list)
    kernels: dict[int, float] = field(default_factory=dict)  # pid -> create_time
    fds: list[tuple[float, int]] = field(default_factory=list)  # (time, open fds of the runner)
    _stop: threading.Event = field(default_factory=threading.Event)

    def watch(self) -> None:
        root = psutil.Process(self.popen.pid)
        while not self._stop.is_set():
            try:
                self.fds.append((time.monotonic(), root.num_fds()))
                kids = root.children(recursive=True)
            except psutil.Error:
                return
            for kid in kids:
                try:
                    cmd = " ".join(kid.cmdline())
                    if "ipykernel" in cmd:
                        self.kernels[kid.pid] = kid.create_time()
                except psutil.Error:
                    continue
                self.argv.append(cmd)
            time.sleep(0.02)

    def finish(self, timeout: float = 240) -> str:
        out, _ = self.popen.communicate(timeout=timeout)
        self._stop.set()
        return out

    def live_kernels(self) -> list[int]:
        """Kernels seen during the run that still exist (same pid, same start)."""
        alive = []
        for pid, created in self.kernels.items():
            try:
                if psutil.Process(pid).create_time() == created:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                continue
        return alive


def start_gpuflow(*args: str, env: dict[str, str] | None = None) -> Watched:
    """`python -m gpuflow ARGS` with a watcher thread polling its descendants."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    popen = subprocess.Popen([sys.executable, "-m", "gpuflow", *args], env=full_env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watched = Watched(popen)
    threading.Thread(target=watched.watch, daemon=True).start()
    return watched


@pytest.fixture
def watch_gpuflow() -> object:
    started: list[Watched] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Watched:
        started.append(start_gpuflow(*args, env=env))
        return started[-1]

    yield start
    for w in started:  # a failed assertion must not leave a run behind
        if w.popen.poll() is None:
            w.popen.kill()
            w.popen.wait()
        w._stop.set()
