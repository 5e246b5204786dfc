"""On a real GPU: preflight visible and hidden, each RMM policy in a real
kernel, notebooks whose own RMM cell would crash, telemetry with samples."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from gpu_helpers import notebook, run, save  # tests/gpu/gpu_helpers.py

from gpuflow.core import errors
from gpuflow.gpu import devices as gpu
from gpuflow.gpu import guard

pytestmark = pytest.mark.gpu

# What the kernel's RMM stack looks like: the top resource and, under the
# statistics adaptor gpuflow pushes for per-cell peaks, its upstream.
PROBE = """import cupy as cp, rmm
x = cp.ones(10**7, dtype=cp.float32); print('sum', float(x.sum()))
mr = rmm.mr.get_current_device_resource(); chain = []
while mr is not None and len(chain) < 5:
    chain.append(type(mr).__name__); mr = getattr(mr, 'upstream_mr', None)
print('mr-chain', '>'.join(chain)); print('allocator', getattr(cp.cuda, 'get_allocator', lambda: '?')())"""
NOTEBOOK_OWN = """import rmm, cupy as cp
from rmm.allocators.cupy import rmm_cupy_allocator
rmm.reinitialize(managed_memory=True, pool_allocator=False, devices=0)
cp.cuda.set_allocator(rmm_cupy_allocator)"""


def test_preflight_visible(gpu_out: Path) -> None:
    facts = gpu.preflight("require")
    assert facts["visible"] and facts["devices"] and facts["runtime_devices"] >= 1
    assert facts["driver"] and facts["cuda_version"]
    save(gpu_out, "preflight_visible.json", facts)


def test_preflight_hidden(monkeypatch: pytest.MonkeyPatch, gpu_out: Path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(errors.NoGPUError) as info:
        gpu.preflight("require")
    line = str(info.value)
    assert line.startswith("no CUDA device visible: CUDA_VISIBLE_DEVICES=''") and "nvidia-smi: " in line
    save(gpu_out, "preflight_hidden.json", {"message": line})


def test_a_fresh_pod_asks_the_driver_while_the_kernel_starts(tmp_path: Path, gpu_out: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("GPUFLOW_CACHE_DIR", str(tmp_path / "cache"))  # nothing kept: a new pod
    t0 = time.perf_counter()
    check = gpu.Preflight.start("require")
    started_s = time.perf_counter() - t0
    assert check.detection is not None and check.detection.pending  # nvidia-smi listed the GPU
    facts = check.settle()
    assert facts["runtime_devices"] >= 1 and started_s < 0.15, (started_s, facts)
    # through execute the wait comes after the kernel's start, which covers the probe
    waits: list[float] = []
    settle = gpu.Preflight.settle

    def timed_settle(self: gpu.Preflight) -> dict[str, object]:
        done = settle(self)
        waits.append(self.detection.waited_s if self.detection else -1.0)
        return done

    monkeypatch.setattr(gpu.Preflight, "settle", timed_settle)
    monkeypatch.setenv("GPUFLOW_CACHE_DIR", str(tmp_path / "cache2"))
    nb, text = run(notebook(tmp_path / "in.ipynb", "print('ran')"), tmp_path / "out.ipynb",
                   guard.GuardOptions(gpu="require", rmm="off"))
    assert "ran" in text and len(waits) == 1
    save(gpu_out, "preflight_fresh.json", {"start_ms": round(started_s * 1000, 1),
                                           "standalone_wait_ms": round(facts.get("probe_wait_s", 0) * 1000, 1),
                                           "execute_wait_ms": round(waits[0] * 1000, 1)})


@pytest.mark.parametrize("policy, expect", [
    ("pool", "PoolMemoryResource"), ("auto", "PoolMemoryResource"), ("managed", "ManagedMemoryResource"),
    ("async", "CudaAsyncMemoryResource"), ("off", None), ("notebook", "ManagedMemoryResource"),
])
def test_policy_in_a_real_kernel(tmp_path: Path, gpu_out: Path, policy: str, expect: str | None) -> None:
    # every notebook asks for managed memory itself; only `notebook` lets it
    src = notebook(tmp_path / "in.ipynb", NOTEBOOK_OWN, PROBE)
    opts = guard.GuardOptions(rmm=policy, rmm_pool_size="2GiB" if policy in ("pool", "async") else None)
    nb, text = run(src, tmp_path / "out.ipynb", opts)
    meta = nb.metadata["gpuflow"]["guard"]
    chain = next(line for line in text.splitlines() if line.startswith("mr-chain"))
    save(gpu_out, f"policy_{policy}.json", {"guard": meta, "mr_chain": chain})
    assert meta["fallback"] is None, meta
    assert "sum 10000000.0" in text
    if expect:
        assert expect in chain
    if policy in ("pool", "async"):
        assert meta["pool_size"] == 2 << 30
    action = meta["events"][0]["action"]
    assert action == ("applied" if policy == "notebook" else "skipped")
    if policy not in ("notebook", "managed"):
        assert "ManagedMemoryResource" not in chain  # the enforced policy won over the notebook's managed


def test_notebook_rmm_cell_with_a_bad_argument(tmp_path: Path, gpu_out: Path) -> None:
    src = notebook(tmp_path / "in.ipynb",
                   "import rmm\nrmm.reinitialize(pool_allocator=True, initial_pool_size='999TiB')",
                   "import cupy as cp\nfrom rmm.allocators.cupy import rmm_cupy_allocator\n"
                   "cp.cuda.set_allocator(rmm_cupy_allocator)\nprint('after', float(cp.arange(10).sum()))")
    nb, text = run(src, tmp_path / "out.ipynb", guard.GuardOptions(rmm="notebook"))
    meta = nb.metadata["gpuflow"]["guard"]
    save(gpu_out, "bad_argument.json", {"guard": meta, "text": text[-2000:]})
    assert "after 45.0" in text
    assert meta["events"][0]["action"] == "failed" and "WARNING: rmm.reinitialize(" in text


def test_notebook_managed_on_a_hidden_device(tmp_path: Path, gpu_out: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # the Tekton pods the guard was written for: the notebook calls reinitialize with no device visible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    src = notebook(tmp_path / "in.ipynb", "import rmm\nrmm.reinitialize(managed_memory=True)\nprint('survived')")
    nb, text = run(src, tmp_path / "out.ipynb", guard.GuardOptions(rmm="notebook"))
    meta = nb.metadata["gpuflow"]["guard"]
    save(gpu_out, "hidden_device.json", {"guard": meta, "text": text[-2000:]})
    assert "survived" in text and meta["fallback"] == "no CUDA device visible"
    event = meta["events"][0]
    # RMM raises its `.msg` AttributeError (or a cudaErrorNoDevice) here; either way it reads as this
    assert event["action"] == "applied" or "no CUDA device visible" in event["fallback"], event


def test_telemetry_with_real_samples(tmp_path: Path, gpu_out: Path) -> None:
    src = notebook(tmp_path / "in.ipynb",
                   "import cupy as cp, time\nx = cp.random.random((8192, 8192), dtype=cp.float32)",
                   "t0 = time.time()\nwhile time.time() - t0 < 3:\n    y = x @ x\ncp.cuda.Device().synchronize()",
                   "del x, y")
    out = tmp_path / "out" / "out.ipynb"
    run(src, out, guard.GuardOptions(rmm="pool"))
    data = json.loads((out.parent / "telemetry.json").read_text())
    save(gpu_out, "telemetry.json", {k: v for k, v in data.items() if k != "samples"} |
         {"n_samples": len(data["samples"])})
    assert data["gpu"] and len(data["samples"]) >= 6  # >= 2 Hz over a > 3 s run
    assert data["peak_memory_bytes"] > 256 << 20 and data["mean_utilization_pct"] > 0
    peaks = [c["peak_bytes"] for c in data["cells"]]
    assert peaks and max(peaks) >= 8192 * 8192 * 4  # the cell that made x


def test_gpu_smoke_notebook_sees_the_device_through_rmm(tmp_path: Path, gpu_out: Path) -> None:
    from gpu_helpers import ROOT

    nb, text = run(ROOT / "notebooks" / "gpu_smoke.ipynb", tmp_path / "smoke.ipynb", guard.GuardOptions(rmm="pool"))
    save(gpu_out, "gpu_smoke.json", {"guard": nb.metadata["gpuflow"]["guard"], "text": text[-2000:]})
    assert "gpuflow-smoke: backend cupy" in text and "gpuflow-smoke: devices 0" not in text
    assert "rmm_cupy_allocator" in text  # CuPy allocates through RMM, as the guard set it
