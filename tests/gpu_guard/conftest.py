"""Fixtures for the CPU side of the GPU guard. The only fakes are the GPU
ones: a fake `nvidia-smi` on PATH and fake `rmm`/`cupy`/`pynvml` module
objects in-process (a device cannot exist on this machine)."""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from gpuflow._embedded import kernel_guard as _kernel_guard

FAKE_SMI = """#!/bin/sh
case "$1" in
  -L) echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-fake)";;
  --query-gpu=*) echo "0, NVIDIA H100 80GB HBM3, 81559, 580.65.06";;
  *) echo "| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: 13.0 |";;
esac
"""


@pytest.fixture
def fake_smi(tmp_path: Path) -> Path:
    """A directory holding a fake nvidia-smi: the GPU's only stand-in."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    return bin_dir


class FakeRuntime:
    def __init__(self, count: int) -> None:
        self.count = count

    def getDeviceCount(self) -> int:
        if self.count < 0:
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        return self.count

    def memGetInfo(self) -> tuple[int, int]:
        return 70 << 30, 80 << 30

    def getDeviceProperties(self, i: int) -> dict[str, Any]:
        return {"name": b"Fake H100"}


class FakeGPU:
    """fake `cupy` and `rmm` modules recording what the guard does to them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int = 1) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.reinit_error: BaseException | None = None
        self.pool = types.SimpleNamespace(malloc="cupy-default-malloc")
        self.cupy = types.ModuleType("cupy")
        self.cupy.cuda = types.SimpleNamespace(runtime=FakeRuntime(count), set_allocator=self._set_allocator)
        self.cupy.get_default_memory_pool = lambda: self.pool
        self.rmm = types.ModuleType("rmm")
        self.rmm.reinitialize = self._reinitialize
        self.rmm.mr = types.SimpleNamespace(
            CudaAsyncMemoryResource=lambda **kw: ("async", kw),
            set_current_device_resource=lambda mr: self.calls.append(("set_resource", mr)),
        )
        allocators = types.ModuleType("rmm.allocators")
        self.alloc_mod = types.ModuleType("rmm.allocators.cupy")
        self.alloc_mod.rmm_cupy_allocator = "rmm-allocator"
        for name, mod in {"cupy": self.cupy, "rmm": self.rmm, "rmm.allocators": allocators,
                          "rmm.allocators.cupy": self.alloc_mod}.items():
            monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.delitem(sys.modules, "rmm.statistics", raising=False)

    def _reinitialize(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("reinitialize", kwargs))
        if self.reinit_error is not None:
            raise self.reinit_error

    def _set_allocator(self, allocator: Any = None) -> None:
        self.calls.append(("set_allocator", allocator))

    def allocators(self) -> list[Any]:
        return [a for kind, a in self.calls if kind == "set_allocator"]

    def reinits(self) -> list[dict[str, Any]]:
        return [kw for kind, kw in self.calls if kind == "reinitialize"]


@pytest.fixture(autouse=True)
def _fresh_guard_state() -> None:
    _kernel_guard.STATE.clear()
    _kernel_guard.STATE.update(policy=None, enforce=False, fallback=None, events=[])


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeGPU:
    return FakeGPU(monkeypatch)


@pytest.fixture
def no_device_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeGPU:
    """cupy and rmm installed, but the process sees no device."""
    return FakeGPU(monkeypatch, count=-1)


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake `pynvml` (nvidia-ml-py) in this process: memory grows 1 MiB per read."""
    state = {"used": 0}

    def memory(handle: object) -> types.SimpleNamespace:
        state["used"] += 1 << 20
        return types.SimpleNamespace(used=state["used"], total=80 << 30)

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}", nvmlDeviceGetName=lambda h: b"Fake H100",
        nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=50),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)


@pytest.fixture
def small_h5ad(tmp_path: Path) -> Path:
    import anndata
    import numpy as np
    import scipy.sparse

    rng = np.random.default_rng(1)
    X = scipy.sparse.random(300, 120, density=0.1, format="csr", dtype=np.float32, random_state=rng)
    adata = anndata.AnnData(X)
    adata.obs_names = [f"cell{i}" for i in range(300)]
    adata.var_names = [f"gene{i}" for i in range(120)]
    path = tmp_path / "data" / "small.h5ad"
    path.parent.mkdir()
    adata.write_h5ad(path)
    return path


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the preflight keeps the driver's answer in gpuflow's cache dir: each test its own
    monkeypatch.setenv("GPUFLOW_CACHE_DIR", str(tmp_path / "gpuflow-cache"))
