"""A pytest plugin that holds a pytest started early until the HTML is staged.

`gpuflow run` starts the test step's pytest while the notebook still runs, so
that Python, pytest, its plugins and coverage load off the critical path. This
plugin, loaded with `-p gpuflow_pytest_gate` from a copy of this file, waits
before collection for the gate file named by $GPUFLOW_PYTEST_GATE: "go" lets
the session run, anything else ends it before a test is collected.

Standalone on purpose (stdlib and pytest only): the test environment may be a
venv without gpuflow.
"""
from __future__ import annotations

import os
import time

import pytest

GATE_ENV = "GPUFLOW_PYTEST_GATE"
POLL_S = 0.02


def _wait(gate: str) -> str:
    parent = os.getppid()
    while True:
        try:
            with open(gate, encoding="utf-8") as fh:
                return fh.read().strip()
        except FileNotFoundError:
            pass
        if os.getppid() != parent:  # the run is gone: never linger as an orphan
            return "the run that started this pytest is gone"
        time.sleep(POLL_S)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    gate = os.environ.get(GATE_ENV)
    if not gate:
        return
    verdict = _wait(gate)
    if verdict != "go":
        pytest.exit(f"gpuflow: tests not run: {verdict}", returncode=pytest.ExitCode.INTERRUPTED)
