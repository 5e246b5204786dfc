"""GPU suite fixtures; helpers live in gpu_helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from gpu_helpers import gpu_out_dir


@pytest.fixture
def gpu_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$GPUFLOW_GPU_OUT (figures for docs/gpu.md), else a temp dir."""
    return gpu_out_dir(tmp_path_factory)
