"""The whole guard path of a GPU run, in a real kernel, with the GPU faked
at its edges only: a fake nvidia-smi for preflight and fake `cupy`/`rmm`
packages on the kernel's PYTHONPATH. Proves the wiring (setup_rmm, the
reinitialize guard, per-cell statistics hooks, metadata) before the H100 run."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from guard_helpers import notebook, outputs_text

from gpuflow.execute import execute_notebook
from gpuflow.gpu import guard

FAKES = {
    "cupy/__init__.py": """
import json, os
LOG = os.environ["FAKE_GPU_LOG"]
def _log(*event):
    with open(LOG, "a") as fh: fh.write(json.dumps(event) + "\\n")
class _Runtime:
    def getDeviceCount(self): return 1
    def memGetInfo(self): return (70 << 30, 80 << 30)
    def getDeviceProperties(self, i): return {"name": b"Fake H100"}
class _Pool:
    malloc = "cupy-default"
class cuda:
    runtime = _Runtime()
    @staticmethod
    def set_allocator(a=None): _log("set_allocator", str(a))
def get_default_memory_pool(): return _Pool()
""",
    "rmm/__init__.py": """
import os
from cupy import _log
def reinitialize(**kw):
    _log("reinitialize", kw)
    if os.environ.get("FAKE_RMM_MSG_BUG"):  # RMM's own bug when no device is visible
        raise AttributeError("'CUDARuntimeError' object has no attribute 'msg'")
class mr:
    @staticmethod
    def set_current_device_resource(r): _log("resource", r)
""",
    "rmm/allocators/__init__.py": "",
    "rmm/allocators/cupy.py": "rmm_cupy_allocator = 'rmm-allocator'\n",
    "rmm/statistics.py": """
from dataclasses import dataclass
@dataclass
class Statistics:
    peak_bytes: int
    total_bytes: int
_n = [0]
def enable_statistics(): pass
def push_statistics(): return None
def pop_statistics():
    _n[0] += 1
    return Statistics(peak_bytes=1000 * _n[0], total_bytes=2000 * _n[0])
def get_statistics():
    return Statistics(peak_bytes=5000 * _n[0], total_bytes=9000 * _n[0])
""",
}


@pytest.fixture
def fake_gpu_env(tmp_path: Path, fake_smi: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "fakesite"
    for rel, text in FAKES.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    log = tmp_path / "gpu.log"
    monkeypatch.setenv("FAKE_GPU_LOG", str(log))
    monkeypatch.setenv("PATH", f"{fake_smi}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{root}")
    return log


def test_pool_policy_end_to_end(tmp_path: Path, fake_gpu_env: Path, fake_nvml: None) -> None:
    src = notebook(tmp_path / "in.ipynb",
                   "import rmm\nrmm.reinitialize(managed_memory=True, pool_allocator=False, devices=0)",
                   "print('work')")
    out = tmp_path / "out" / "out.ipynb"
    execute_notebook(src, out, progress_bar=False, guard=guard.GuardOptions(rmm="pool", rmm_pool_size="1GiB"))
    nb = nbformat.read(out, as_version=4)
    text = outputs_text(nb)
    meta = nb.metadata["gpuflow"]["guard"]
    assert meta["applied"] == "pool" and meta["pool_size"] == 1 << 30 and meta["fallback"] is None
    assert meta["device"]["name"] == "Fake H100" and meta["cell_stats"] is True
    assert meta["events"] == [{"call": "reinitialize(managed_memory=True, pool_allocator=False, devices=0)",
                               "action": "skipped", "policy": "pool"}]
    assert "gpuflow-guard: RMM pool, initial pool 1,073,741,824 bytes on Fake H100" in text
    calls = [json.loads(line) for line in fake_gpu_env.read_text().splitlines()]
    assert calls == [["reinitialize", {"pool_allocator": True, "managed_memory": False,
                                       "initial_pool_size": 1 << 30, "devices": 0}],
                     ["set_allocator", "rmm-allocator"]]  # the notebook's managed call never reached RMM
    tel = json.loads((out.parent / "telemetry.json").read_text())
    assert tel["gpu"] == "Fake H100" and tel["samples"]
    # per-cell rows the kernel's post_run_cell hook wrote from (fake) rmm.statistics
    assert len(tel["cells"]) >= 2 and all(c["peak_bytes"] > 0 for c in tel["cells"])
    # the notebook's peak is the outermost counter's, read after each cell
    assert tel["rmm_peak_bytes"] == max(c["notebook_peak_bytes"] for c in tel["cells"]) > tel["cells"][-1]["peak_bytes"]


def test_notebook_policy_msg_bug_in_a_real_kernel(tmp_path: Path, fake_gpu_env: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_RMM_MSG_BUG", "1")
    src = notebook(tmp_path / "in.ipynb",
                   "import rmm, cupy as cp\nfrom rmm.allocators.cupy import rmm_cupy_allocator\n"
                   "rmm.reinitialize(managed_memory=True)\ncp.cuda.set_allocator(rmm_cupy_allocator)",
                   "print('still running')")
    out = tmp_path / "out.ipynb"
    execute_notebook(src, out, progress_bar=False, guard=guard.GuardOptions(rmm="notebook", telemetry=False))
    nb = nbformat.read(out, as_version=4)
    text = outputs_text(nb)
    assert "still running" in text
    assert "WARNING: rmm.reinitialize(managed_memory=True) failed: no CUDA device visible" in text
    event = nb.metadata["gpuflow"]["guard"]["events"][0]
    assert event["action"] == "failed" and event["fallback"].startswith("no CUDA device visible (RMM raised")
    calls = [json.loads(line) for line in fake_gpu_env.read_text().splitlines()]
    assert calls[-1] == ["set_allocator", "cupy-default"]  # fallback kept; the notebook's RMM allocator skipped
