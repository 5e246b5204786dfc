"""Kernel start: one retry for a kernel that dies while starting (the port
races of parallel papermill runs), and the import-time promise of --help."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuflow import execute
from tests.execute.conftest import ROOT, MakeNotebook, last_line, read

# Dies on its first start (when the marker is missing), then is ipykernel.
FLAKY = """
import pathlib, sys
marker = pathlib.Path(sys.argv[1])
if not marker.exists() or marker.read_text() == "never":
    marker.write_text(marker.read_text() if marker.exists() else "failed once")
    sys.exit(3)
from ipykernel.kernelapp import launch_new_instance
sys.argv = [sys.argv[0], *sys.argv[2:]]
launch_new_instance()
"""


@pytest.fixture
def flaky_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    spec = tmp_path / "jupyter" / "kernels" / "flaky"
    spec.mkdir(parents=True)
    marker = tmp_path / "flaky.marker"
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", FLAKY, str(marker), "-f", "{connection_file}"],
        "display_name": "flaky", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return marker


def test_a_kernel_that_dies_starting_is_retried_once(
    flaky_kernel: Path, make_notebook: MakeNotebook, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "retry" / "out.ipynb"
    assert execute.main([str(make_notebook("print('ran')")), str(out), "--kernel", "flaky",
                         "--no-progress-bar", "--log-level", "INFO"]) == 0
    assert "did not start" in capsys.readouterr().err and "retrying once" in (out.parent / "out.papermill.log").read_text()
    assert read(out).cells[0].outputs[0].text == "ran\n"


def test_a_kernel_that_never_starts_is_exit_137(
    flaky_kernel: Path, make_notebook: MakeNotebook, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flaky_kernel.write_text("never")
    out = tmp_path / "never" / "out.ipynb"
    assert execute.main([str(make_notebook("print('ran')")), str(out), "--kernel", "flaky", "--no-progress-bar"]) == 137
    line = last_line(capsys.readouterr().err)
    assert line.startswith("gpuflow.execute: kernel flaky did not start: ") and line.endswith(f"(see {out})")
    assert read(out).cells[1].execution_count is None  # saved, with a banner on top


def test_import_and_help_do_not_load_the_jupyter_stack() -> None:
    code = (
        "import sys, gpuflow.execute as e\n"
        "rc = e.main(['--help'])\n"
        "heavy = [m for m in ('papermill', 'nbconvert', 'nbclient', 'jupyter_client', 'nbformat', 'zmq')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy, rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert last_line(done.stdout) == "HEAVY [] 0", done.stderr
    assert "--pass-env" in done.stdout and "--cell-timeout" in done.stdout
