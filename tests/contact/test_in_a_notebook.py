"""gpuflow from Python and from inside a running Jupyter kernel."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpuflow import clone, convert, doctor, download, execute, stage, test
from gpuflow.flow import notebook as flow_notebook
from gpuflow.flow import report as flow_report
from tests.contact.helpers import ROOT, write_notebook

RESULTS = (execute.ExecuteResult, clone.CloneResult, download.DownloadResult, convert.ConvertResult,
           stage.StageResult, stage.RepoResult, test.TestResult, doctor.DoctorReport,
           flow_notebook.NotebookResult, flow_report.RunResult)


@pytest.mark.parametrize("cls", RESULTS, ids=lambda c: c.__name__)
def test_every_step_result_renders_in_jupyter_and_reads_as_text(cls: type) -> None:
    assert callable(getattr(cls, "_repr_html_", None)), cls
    assert any("__str__" in vars(k) for k in cls.__mro__ if k is not object), cls


def test_results_render(tmp_path: Path) -> None:
    src = write_notebook(tmp_path / "n.ipynb", "print('<b>x</b>')")
    res = execute.execute_notebook(src, tmp_path / "out" / "n_out.ipynb", progress_bar=False, log_level="WARNING")
    assert "<table>" in res._repr_html_() and "success" in str(res)
    report = doctor.doctor(gpu=False, out=tmp_path / "out")
    assert "<table>" in report._repr_html_() and "nbconvert lab template" in str(report)


def test_execute_notebook_inside_a_running_kernel(tmp_path: Path) -> None:
    inner = write_notebook(tmp_path / "inner.ipynb", "print('inner ran')")
    driver = write_notebook(
        tmp_path / "driver.ipynb",
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom gpuflow.execute import execute_notebook",
        f"res = execute_notebook({str(inner)!r}, {str(tmp_path / 'out' / 'inner_out.ipynb')!r}, "
        "progress_bar=False, log_level='WARNING')\nprint('RESULT', res.status, res.executed_cells)",
        "res2 = execute_notebook(" + repr(str(inner)) + ", " + repr(str(tmp_path / 'out' / 'inner_out2.ipynb'))
        + ", progress_bar=False, log_level='WARNING')\nprint('AGAIN', res2.status)",
    )
    # papermill runs the driver: its kernel has a running event loop, as Jupyter's does
    done = subprocess.run([sys.executable, "-m", "papermill", str(driver), str(tmp_path / "driver_out.ipynb"),
                           "-k", "python3"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "driver_out.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in out["cells"] for o in c.get("outputs", []))
    assert "RESULT success 1" in text and "AGAIN success" in text
