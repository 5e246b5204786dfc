"""GPU suite helpers (run on the H100 by benchmarks/gpu_suite.sh). A plain
module, not a second conftest. Notebooks go through gpuflow.execute, so
preflight, the injected guard cell, telemetry and the metadata are the real
ones. Results land in $GPUFLOW_GPU_OUT."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from gpuflow.execute import execute_notebook
from gpuflow.gpu import guard

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "gpu_guard"))  # one home for the notebook helpers
from guard_helpers import notebook, outputs_text  # noqa: E402,F401


def gpu_out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = os.environ.get("GPUFLOW_GPU_OUT")
    path = Path(out) if out else tmp_path_factory.mktemp("gpu-out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save(gpu_out: Path, name: str, data: Any) -> None:
    (gpu_out / name).write_text(json.dumps(data, indent=1, default=str) + "\n")


def run(src: Path, out: Path, opts: guard.GuardOptions, **kwargs: Any) -> tuple[Any, str]:
    """Execute through gpuflow; return the output notebook and its text."""
    execute_notebook(src, out, progress_bar=False, guard=opts, **kwargs)
    nb = nbformat.read(out, as_version=4)
    return nb, outputs_text(nb)
