"""`kill -9` of `gpuflow run` (alone or with its process group) leaves no notebook running behind it."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gpuflow.core.artifacts import RunDir
from tests.flow.test_run import notebook

pytestmark = pytest.mark.usefixtures("steps_present")


def _descendants(pid: int) -> dict[int, float]:
    try:
        return {p.pid: p.create_time() for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def _alive(seen: dict[int, float]) -> list[int]:
    alive = []
    for pid, created in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.mark.parametrize("target", ["group", "runner"])
def test_kill_9_of_the_runner_takes_its_notebooks_with_it(tmp_path: Path, target: str) -> None:
    repo, out = tmp_path / "nbs", tmp_path / "out"
    notebook(repo / "slow.ipynb", "import time\ntime.sleep(120)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runner = subprocess.Popen([sys.executable, "-m", "gpuflow", "run", "--repo", str(repo), "--notebooks",
                               "slow.ipynb", "--test-repo", "", "--gpu", "off", "--out", str(out)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # its own group, as a CI step's shell gives it
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        seen.update(_descendants(runner.pid))
        kernels = [pid for pid in _alive(seen) if "ipykernel" in " ".join(psutil.Process(pid).cmdline())]
        if kernels:
            break
        time.sleep(0.1)
    assert kernels, "the kernel never started"
    time.sleep(1)
    seen.update(_descendants(runner.pid))
    lock = RunDir(next(p for p in out.iterdir() if p.is_dir())).lock
    if target == "group":
        os.killpg(runner.pid, signal.SIGKILL)
    else:
        runner.kill()
    runner.wait()
    # while any of its children lives, the run dir stays locked: a resume cannot start beside it
    with open(lock, "a+") as fh:
        stop = time.monotonic() + 10
        while _alive(seen) and time.monotonic() < stop:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            time.sleep(0.1)
        left = _alive(seen)
        assert left == [], [" ".join(psutil.Process(p).cmdline())[:200] for p in left]
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # and free once they are gone
