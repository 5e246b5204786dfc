"""SIGTERM during a notebook's convert or pytest inside `gpuflow run` is 143 everywhere it is recorded."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuflow.core.artifacts import ArtifactDir, RunDir
from tests.flow.test_run import notebook, only_run

pytestmark = pytest.mark.usefixtures("steps_present")


def _wait_for(check: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


@pytest.mark.parametrize("during", ["pytest", "convert"])
def test_sigterm_inside_run_is_143_in_the_run_and_step_records(tmp_path: Path, test_repo: Path, during: str) -> None:
    repo, out = tmp_path / "nbs", tmp_path / "out"
    if during == "convert":
        notebook(repo / "a.ipynb", "print('RESULT=', n)")
    else:
        notebook(repo / "a.ipynb", "print('RESULT=', n)")
        (test_repo / "tests" / "test_slow.py").write_text(
            "import time\nimport pytest\n\n@pytest.mark.single_cell\ndef test_slow():\n"
            "    open('started', 'w').close()\n    time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # a conversion that takes a few seconds, as a big notebook's does, so the signal lands inside it
    slow = ("import time, gpuflow.convert as c\nreal = c.convert_notebook\n"
            "def convert_notebook(*a, **k):\n    time.sleep(4)\n    return real(*a, **k)\n"
            "c.convert_notebook = convert_notebook\n") if during == "convert" else ""
    code = f"import sys\n{slow}from gpuflow.__main__ import main\nraise SystemExit(main(['run', *sys.argv[1:]]))\n"
    runner = subprocess.Popen([sys.executable, "-c", code, "--repo", str(repo), "--notebooks", "a.ipynb",
                               "--test-repo", str(test_repo), "--gpu", "off", "--out", str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: out.is_dir() and any(out.iterdir()))
    run_dir = only_run(out)
    if during == "convert":
        _wait_for(lambda: (run_dir / "a" / "steps" / "execute.json").is_file())
        time.sleep(1)
    else:
        _wait_for(lambda: list(run_dir.rglob("started")))
    runner.send_signal(signal.SIGTERM)
    output, _ = runner.communicate(timeout=120)
    assert runner.returncode == 143, output[-3000:]
    assert json.loads(RunDir(run_dir).run_json.read_text())["exit_code"] == 143
    summary = json.loads(ArtifactDir(run_dir / "a").summary_json.read_text())
    assert summary["exit_code"] == 143, summary
    if during == "pytest":
        test_record = json.loads((run_dir / "a" / "steps" / "test.json").read_text())
        assert test_record["exit_code"] == 143, test_record
        assert "usage" not in (test_record.get("error") or "")
