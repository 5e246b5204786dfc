"""The guard wired through gpuflow.execute: the injected cell is tagged and
hidden, its record lands in the output notebook's metadata, lite mode works
in a real kernel, and the blueprint notebook prepares with the guard first."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from guard_helpers import notebook, outputs_text

from gpuflow.core import errors
from gpuflow.execute import execute_notebook
from gpuflow.execute import main as execute_main
from gpuflow.gpu import guard


def test_execute_with_lite_records_the_guard(tmp_path: Path, small_h5ad: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    src = notebook(tmp_path / "in.ipynb", f"import anndata\nprint(anndata.read_h5ad({str(small_h5ad)!r}).shape)")
    out = tmp_path / "out" / "out.ipynb"
    execute_notebook(src, out, progress_bar=False,
                     guard=guard.GuardOptions(lite=True, max_cells=100, max_genes=50, rmm="pool"))
    nb = nbformat.read(out, as_version=4)
    first = nb.cells[0]
    assert first.metadata["tags"] == [guard.GUARD_TAG] and first.metadata["jupyter"]["source_hidden"]
    text = outputs_text(nb)
    assert "gpuflow-guard: no GPU visible (CUDA_VISIBLE_DEVICES=''" in text and "(100, 50)" in text
    meta = nb.metadata["gpuflow"]["guard"]
    assert meta["policy"] == "pool" and meta["fallback"] == "no CUDA device visible" and meta["events"] == []
    assert not (out.parent / "telemetry.json").exists()  # no GPU: telemetry is simply absent


def test_execute_require_exits_4_before_any_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    src = notebook(tmp_path / "in.ipynb", "print(1)")
    out = tmp_path / "out.ipynb"
    assert execute_main([str(src), str(out), "--gpu", "require"]) == errors.NoGPUError.exit_code
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "gpuflow.execute: no CUDA device visible: CUDA_VISIBLE_DEVICES=''")


def test_blueprint_prepares_with_the_guard_first(corpus: Path, tmp_path: Path) -> None:
    src = corpus / "01_scRNA_analysis_preprocessing.ipynb"
    if not src.is_file():
        pytest.skip("blueprint notebook 01 is not in the corpus")
    out = tmp_path / "01_prepared.ipynb"
    assert execute_main([str(src), str(out), "--prepare-only", "--rmm", "pool", "--lite"]) == 0
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].metadata["tags"] == [guard.GUARD_TAG]
    assert "_gpuflow_guard.run_setup(" in code[0].source and "'policy': 'pool'" in code[0].source
    # the blueprint's own RMM cells stay as written and run after the guard, which wraps them
    assert any("rmm.reinitialize" in c.source for c in code[1:])
    rmm_cells = [c for c in code[1:] if "rmm.reinitialize" in c.source]
    assert all("gpuflow-rmm-guarded" in c.metadata["tags"] for c in rmm_cells)
    report = nb.metadata["gpuflow"]["prepare"]
    assert report["guard_injected"] and report["rmm_cells"] and report["removed_cells"]
    live = [line for c in code for line in c.source.splitlines() if not line.lstrip().startswith("#")]
    assert not any("do_shutdown" in line for line in live)  # the shutdown cell is stripped


def _counts(nb: nbformat.NotebookNode) -> list[int | None]:
    return [c.get("execution_count") for c in nb.cells if c.cell_type == "code"]


def test_counts_equal_papermills_and_the_guard_runs_before_injected_parameters(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import papermill

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # no `parameters` cell: papermill puts its injected parameters first
    src = notebook(tmp_path / "in.ipynb", "import sys\nprint('guard first:', 'gpuflow._embedded.kernel_guard' in "
                   "sys.modules or '_gpuflow_guard' in globals())", "print(x)")
    ours, theirs = tmp_path / "ours" / "out.ipynb", tmp_path / "theirs.ipynb"
    execute_notebook(src, ours, progress_bar=False, parameters={"x": 5}, guard=guard.GuardOptions(rmm="off"))
    papermill.execute_notebook(str(src), str(theirs), parameters={"x": 5}, kernel_name="python3",
                               progress_bar=False)
    got, want = nbformat.read(ours, as_version=4), nbformat.read(theirs, as_version=4)
    guard_cell = next(c for c in got.cells if guard.GUARD_TAG in c.metadata.get("tags", []))
    assert guard_cell.execution_count is None and guard_cell.metadata["gpuflow"] == {"injected": "guard"}
    assert [n for n in _counts(got) if n is not None] == _counts(want) == [1, 2, 3]
    assert "guard first: True" in outputs_text(got)
    # papermill put its parameters above the guard cell; the guard still ran before them
    params = next(c for c in got.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert got.cells.index(params) < got.cells.index(guard_cell)
    assert guard_cell.metadata["papermill"]["end_time"] <= params.metadata["papermill"]["start_time"]
    # the cell in the output notebook is a few lines: gpuflow is importable in this kernel
    assert len("".join(guard_cell.source).splitlines()) <= 4
    assert got.metadata["gpuflow"]["guard"]["applied"] is None  # no GPU visible: nothing set up


def test_a_kernel_without_gpuflow_gets_the_embedded_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    shadow = tmp_path / "shadow" / "gpuflow"
    (shadow / "_embedded").mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    for name in ("_embedded/__init__.py", "_embedded/kernel_guard.py"):
        (shadow / name).write_text("raise ImportError('shadowed for this test')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    src = notebook(tmp_path / "in.ipynb", "print('inline guard:', not hasattr(_gpuflow_guard, '__file__'))")
    out = tmp_path / "out" / "out.ipynb"
    execute_notebook(src, out, progress_bar=False, guard=guard.GuardOptions())
    nb = nbformat.read(out, as_version=4)
    assert "inline guard: True" in outputs_text(nb) and "ImportError" not in outputs_text(nb)
    assert _counts(nb) == [None, 1]
    assert nb.metadata["gpuflow"]["guard"]["fallback"] == "no CUDA device visible"


def test_gpu_off_without_lite_injects_nothing(tmp_path: Path) -> None:
    src = notebook(tmp_path / "in.ipynb", "print(1)")
    out = tmp_path / "out" / "out.ipynb"
    execute_notebook(src, out, progress_bar=False, guard=guard.GuardOptions(gpu="off"))
    nb = nbformat.read(out, as_version=4)
    assert _counts(nb) == [1] and "gpuflow-guard" not in outputs_text(nb)
    assert "guard" not in nb.metadata.get("gpuflow", {})


def _driver_sees_nothing(monkeypatch: pytest.MonkeyPatch, fake_smi: Path, tmp_path: Path) -> None:
    """nvidia-smi lists a GPU but the CUDA driver, asked in its child, counts
    none (a driver and library that do not match, say), and answers slowly."""
    import time

    from gpuflow.gpu import devices

    def count(env: dict[str, str]) -> dict[str, object]:
        time.sleep(0.3)
        return {"libcuda": 0, "cuda_driver_version": 13000}

    monkeypatch.setattr(devices, "driver_count", count)
    monkeypatch.setenv("PATH", f"{fake_smi}:{__import__('os').environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("GPUFLOW_CACHE_DIR", str(tmp_path / "cache"))


def test_require_settles_after_the_kernel_starts_and_before_any_cell(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_smi: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _driver_sees_nothing(monkeypatch, fake_smi, tmp_path)
    marker = tmp_path / "ran"
    src = notebook(tmp_path / "in.ipynb", f"open({str(marker)!r}, 'w').close()")
    out = tmp_path / "out" / "out.ipynb"
    assert execute_main([str(src), str(out), "--gpu", "require"]) == errors.NoGPUError.exit_code
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("gpuflow.execute: no CUDA device visible:") and "libcuda: 0 device(s)" in last
    assert not marker.exists()  # no cell ran, the guard's neither
    nb = nbformat.read(out, as_version=4)  # what there is, is kept
    assert all(c.get("execution_count") is None and not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_auto_runs_on_when_the_driver_sees_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_smi: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _driver_sees_nothing(monkeypatch, fake_smi, tmp_path)
    src = notebook(tmp_path / "in.ipynb", "print('ran on')")
    out = tmp_path / "out.ipynb"
    assert execute_main([str(src), str(out), "--rmm", "off", "--no-telemetry"]) == 0
    assert "libcuda: 0 device(s); running on the CPU" in capsys.readouterr().err
    assert "ran on" in outputs_text(nbformat.read(out, as_version=4))
