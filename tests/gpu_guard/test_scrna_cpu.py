"""The scRNA notebook on the CPU through a real kernel: markers, timings,
two inline PNG plots; and the committed notebooks carry no outputs."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


@pytest.mark.parametrize("name", ["scrna_preprocessing.ipynb", "gpu_smoke.ipynb"])
def test_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def test_parameters_cell_is_tagged() -> None:
    nb = nbformat.read(NOTEBOOKS / "scrna_preprocessing.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    for name in ("h5ad", "n_cells", "n_genes", "density", "seed", "out_dir", "timings_path"):
        assert f"\n{name} = " in "\n" + params[0].source


def test_scrna_runs_on_cpu(tmp_path: Path) -> None:
    import papermill

    out, timings = tmp_path / "scrna_out.ipynb", tmp_path / "timings.json"
    papermill.execute_notebook(
        str(NOTEBOOKS / "scrna_preprocessing.ipynb"), str(out), kernel_name="python3", progress_bar=False,
        parameters={"n_cells": 600, "n_genes": 400, "n_top_genes": 200, "timings_path": str(timings),
                    "out_dir": str(tmp_path / "fig")},
        cwd=str(tmp_path), start_timeout=120,
    )
    nb = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "gpuflow-scrna: backend numpy" in text
    assert "gpuflow-scrna: filtered " in text and " cells x " in text
    for stage in ("load", "qc", "normalize", "hvg", "scale", "pca", "neighbors", "cluster"):
        assert f"gpuflow-scrna: stage {stage} " in text
    assert text.rstrip().endswith("gpuflow-scrna: done")
    pngs = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pngs) == 2
    data = json.loads(timings.read_text())
    assert data["backend"] == "numpy" and set(data["stages"]) >= {"qc", "pca", "neighbors"}
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["pca_scatter.png", "qc_hist.png"]


def test_gpu_smoke_runs_on_cpu(tmp_path: Path) -> None:
    import papermill

    out = tmp_path / "smoke.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / "gpu_smoke.ipynb"), str(out), kernel_name="python3",
                               progress_bar=False, cwd=str(tmp_path), start_timeout=120)
    text = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", []))
    assert "gpuflow-smoke: devices 0" in text and "gpuflow-smoke: backend numpy" in text
