"""On a real GPU (issue 9): a notebook that allocates beyond device memory
fails as a clear cell error under every RMM policy, with its notebook saved,
and never hangs."""
from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

from gpu_helpers import notebook, outputs_text, run, save  # tests/gpu/gpu_helpers.py
from gpuflow import errors, guard

pytestmark = pytest.mark.gpu

# Beyond the device AND the host: managed memory may oversubscribe the device
# into host RAM, so only a size past both is out of memory under every policy.
OOM = """import cupy as cp, psutil
free, total = cp.cuda.runtime.memGetInfo()
size = 4 * (total + psutil.virtual_memory().total)
print('asking', size >> 30, 'GiB of', total >> 30, flush=True)
x = cp.empty(size, dtype=cp.uint8)
x.fill(1)"""


@pytest.mark.parametrize("policy", guard.RMM_POLICIES)
def test_out_of_memory_is_a_cell_error_never_a_hang(tmp_path: Path, gpu_out: Path, policy: str) -> None:
    src = notebook(tmp_path / "in.ipynb", "print('before', flush=True)", OOM, "print('after')")
    out = tmp_path / "out.ipynb"
    opts = guard.GuardOptions(rmm=policy, rmm_pool_size="2GiB" if policy in ("pool", "async") else None)
    t0 = time.monotonic()
    with pytest.raises(errors.GpuflowError) as info:
        run(src, out, opts, cell_timeout=300, timeout=600)
    took = round(time.monotonic() - t0, 1)
    nb = nbformat.read(out, as_version=4)  # saved, whatever happened
    text = outputs_text(nb)
    error = str(info.value)
    save(gpu_out, f"oom_{policy}.json", {"exit_code": info.value.exit_code, "error": error, "seconds": took})
    assert "before" in text and "asking" in text and "after" not in text
    # a dead kernel (137) would mean the host OOM killer took it: say so, do not hide it
    assert info.value.exit_code == 1, error
    assert any(word in error for word in ("MemoryError", "OutOfMemory", "out_of_memory", "bad_alloc")), error
