"""The injected setup cell: its content, the inline fallback (gpuflow not
importable), and one run through a real kernel with lite mode on."""
from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from guard_helpers import notebook, outputs_text

from gpuflow._embedded import kernel_guard as _kernel_guard
from gpuflow.gpu import guard

NO_GPU = {"visible": False, "checks": ["CUDA_VISIBLE_DEVICES=''", "nvidia-smi: not found"]}


def test_no_cell_when_the_gpu_is_off_without_lite() -> None:
    assert guard.setup_cell_source(guard.GuardOptions(gpu="off", rmm="off"), {}) is None
    assert guard.setup_cell_source(guard.GuardOptions(gpu="off"), {}) is None
    assert guard.setup_cell_source(guard.GuardOptions(gpu="off", lite=True), {}) is not None


def test_the_cell_is_a_few_lines_when_gpuflow_is_importable() -> None:
    src = guard.setup_cell_source(guard.GuardOptions(rmm="pool"), {"visible": True})
    assert src is not None and len(src.splitlines()) <= 4 and "exec(" not in src
    compile(src, "cell", "exec")
    assert "import gpuflow._embedded.kernel_guard as _gpuflow_guard" in src


def test_cell_calls_setup_and_embeds_the_same_source() -> None:
    src = guard.setup_cell_source(guard.GuardOptions(rmm="managed", rmm_pool_size="80%"), {"visible": True},
                                  embed=True)
    assert src is not None
    compile(src, "cell", "exec")
    assert "import gpuflow._embedded.kernel_guard as _gpuflow_guard" in src
    assert repr(Path(_kernel_guard.__file__).read_text()) in src  # one implementation, embedded verbatim
    assert "'policy': 'managed'" in src and "'pool_size': '80%'" in src
    assert "gpuflow/lite" not in src and "lite=None" in src


def test_lite_cell_embeds_lite() -> None:
    src = guard.setup_cell_source(guard.GuardOptions(lite=True, max_cells=123, seed=4), NO_GPU)
    assert src is not None and "'max_cells': 123" in src and "'seed': 4" in src
    assert "'gpu_visible': False" in src


def _exec_without_gpuflow(src: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    real = builtins.__import__

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("gpuflow"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    ns: dict[str, Any] = {}
    exec(src, ns)
    monkeypatch.setattr(builtins, "__import__", real)
    return ns


def test_inline_fallback_runs_the_embedded_guard(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    src = guard.setup_cell_source(guard.GuardOptions(), NO_GPU, embed=True)
    assert src is not None
    ns = _exec_without_gpuflow(src, monkeypatch)
    assert ns["_gpuflow_guard"] is not _kernel_guard  # the embedded copy ran
    assert ns["_gpuflow_guard"].STATE["fallback"] == "no CUDA device visible"
    out = capsys.readouterr().out
    assert "gpuflow-guard: no GPU visible (CUDA_VISIBLE_DEVICES=''; nvidia-smi: not found): running on the CPU" in out


def test_real_kernel_lite_without_gpuflow_installed(tmp_path: Path, small_h5ad: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import papermill

    # the kernel's gpuflow lacks the guard (an empty package shadows any
    # installed one): the inline copy of the guard must do the work
    shadow = tmp_path / "shadow" / "gpuflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    # an editable install finds submodules through its own meta-path finder
    # even under a shadowing package: make those imports fail explicitly
    (shadow / "_embedded").mkdir()
    for name in ("_embedded/__init__.py", "_embedded/kernel_guard.py", "_embedded/lite.py"):
        (shadow / name).write_text("raise ImportError('shadowed for this test')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    src = guard.setup_cell_source(guard.GuardOptions(lite=True, max_cells=100, max_genes=50), NO_GPU, embed=True)
    assert src is not None
    path = notebook(tmp_path / "guarded.ipynb", src, *[
        "print('inline guard:', not hasattr(_gpuflow_guard, '__file__'))",
        f"import scanpy as sc\nadata = sc.read({str(small_h5ad)!r})\nprint('shape', adata.shape)",
    ], tags=([guard.GUARD_TAG],))
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(path), str(out), cwd=str(tmp_path), kernel_name="python3",
                               progress_bar=False, start_timeout=120)
    nb = nbformat.read(out, as_version=4)
    text = outputs_text(nb)
    assert "inline guard: True" in text
    assert "gpuflow-lite: scanpy.readwrite.read: 300 x 120 -> 100 cells x 50 genes (seed 0)" in text
    assert "shape (100, 50)" in text
    guard.finalize_notebook(nb)
    meta = nb.metadata["gpuflow"]["guard"]
    assert meta["fallback"] == "no CUDA device visible" and meta["policy"] == "auto"
    assert "scanpy.read" in meta["lite"]
