from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpuflow import convert
from tests.report.conftest import ROOT, executed_notebook


def test_converts_beside_the_notebook_like_jupyter(good_notebook: Path) -> None:
    assert convert.main([str(good_notebook)]) == 0
    html = good_notebook.with_suffix(".html")
    text = html.read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html") and "</html>" in text
    assert "gpuflow-scrna: done" in text and "data:image/png" in text
    assert "jp-Notebook" in text  # the lab template
    assert "Writing" in (good_notebook.parent / "jupyter_nbconvert.log").read_text()
    rec = json.loads((good_notebook.parent / "steps" / "convert.json").read_text())
    assert rec["status"] == "success" and rec["details"]["bytes"] == html.stat().st_size


def test_library_options(good_notebook: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "page.html"
    result = convert.convert_notebook(good_notebook, out, no_input=True, log_path=tmp_path / "conv.log")
    assert result.html == out and result.bytes == out.stat().st_size > 0
    text = out.read_text()
    assert "print(" not in text  # code hidden, outputs kept
    assert "gpuflow-scrna: done" in text
    assert (tmp_path / "conv.log").is_file()
    assert "<table>" in result._repr_html_()


def test_failed_notebook_converts_with_the_error_visible(tmp_path: Path) -> None:
    nb = executed_notebook(tmp_path / "failed_output.ipynb", fail=True)
    assert convert.main([str(nb)]) == 0
    text = nb.with_suffix(".html").read_text()
    assert "ZeroDivisionError" in text and "Traceback (most recent call last)" in text
    assert "gpuflow-scrna: filtered" in text  # what ran before the failure is kept


@pytest.mark.slow
def test_partial_papermill_notebook_shows_papermill_banner(tmp_path: Path) -> None:
    import nbformat
    import papermill
    from nbformat.v4 import new_code_cell, new_notebook

    src = tmp_path / "in.ipynb"
    nb = new_notebook(cells=[new_code_cell("print('gpuflow-scrna: started')"), new_code_cell("raise ValueError('boom')"),
                             new_code_cell("print('never')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, src)
    out = tmp_path / "partial_output.ipynb"
    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(str(src), str(out), kernel_name="python3", report_mode=True,
                                   start_timeout=120, progress_bar=False)
    result = convert.convert_notebook(out)
    text = result.html.read_text()
    assert "An Exception was encountered at" in text and "ValueError" in text and "boom" in text
    assert "gpuflow-scrna: started" in text


def test_corrupt_notebook_is_exit_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{ not json")
    assert convert.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gpuflow.convert: ") and "not a notebook" in err[-1]
    assert not bad.with_suffix(".html").exists()
    assert "ERROR" in (tmp_path / "jupyter_nbconvert.log").read_text()  # the log says why
    assert convert.main([str(tmp_path / "missing.ipynb")]) == 2


def test_sanitize_html_strips_scripts(tmp_path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    nb = new_notebook(cells=[new_code_cell("x", execution_count=1, outputs=[new_output(
        "display_data", data={"text/html": "<b>kept</b><script>alert('x')</script>"})])])
    path = tmp_path / "untrusted.ipynb"
    nbformat.write(nb, path)
    plain = convert.convert_notebook(path, tmp_path / "plain.html").html.read_text()
    clean = convert.convert_notebook(path, tmp_path / "clean.html", sanitize_html=True).html.read_text()
    assert "<script>alert('x')</script>" in plain
    assert "<script>alert" not in clean and "<b>kept</b>" in clean


def test_importing_the_report_steps_stays_light() -> None:
    code = ("import sys, gpuflow.convert, gpuflow.stage, gpuflow.test, gpuflow.summary, gpuflow.report.render\n"
            "heavy = {'nbconvert', 'papermill', 'nbclient', 'git', 'jupyter_client'} & set(sys.modules)\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    for step in ("convert", "stage", "test", "summary"):
        done = subprocess.run([sys.executable, "-m", f"gpuflow.{step}", "--help"], cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 0 and "usage:" in done.stdout


@pytest.mark.slow
def test_same_html_as_jupyter_nbconvert_on_a_blueprint_notebook(corpus: Path, tmp_path: Path) -> None:
    import shutil

    nb = tmp_path / "01_scRNA_analysis_preprocessing.ipynb"
    shutil.copyfile(corpus / nb.name, nb)
    jupyter = Path(sys.executable).with_name("jupyter")
    if not jupyter.is_file():
        pytest.skip("no jupyter CLI beside this interpreter")
    subprocess.run([str(jupyter), "nbconvert", "--to", "html", str(nb), "--output", str(tmp_path / "cli.html")],
                   check=True, capture_output=True)
    ours = convert.convert_notebook(nb).html
    assert ours == tmp_path / "01_scRNA_analysis_preprocessing.html"
    assert ours.read_text() == (tmp_path / "cli.html").read_text()


def test_the_gpu_guard_cell_is_one_line_in_the_report(tmp_path: Path) -> None:
    import nbformat

    from gpuflow.gpu import guard

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("import gpuflow._embedded.kernel_guard as _gpuflow_guard\n"
                                     "exec(compile('EMBEDDED_SOURCE', 'x', 'exec'))")
    cell.metadata["tags"] = [guard.GUARD_TAG]
    cell.outputs = [nbformat.v4.new_output("stream", text="gpuflow-guard: RMM pool on <GPU>\n")]
    nb.cells = [cell, nbformat.v4.new_code_cell("print('mine')")]
    nb.metadata["gpuflow"] = {"guard": {"policy": "auto", "applied": "pool", "fallback": None,
                                        "device": {"name": "NVIDIA H100 80GB HBM3"}, "events": []}}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    page = convert.convert_notebook(path).html.read_text()
    assert "_gpuflow_guard" not in page and "EMBEDDED_SOURCE" not in page and "RMM pool on" not in page
    assert "gpuflow GPU guard: policy auto; applied pool; on NVIDIA H100 80GB HBM3" in page
    assert "print" in page  # the notebook's own cell stays
