"""The artifact layout: one object names every file of a notebook's dir and a run dir."""
from __future__ import annotations

from pathlib import Path

from gpuflow.core import artifacts
from gpuflow.core.artifacts import ArtifactDir, RunDir


def test_a_notebook_dir_names_its_files(tmp_path: Path) -> None:
    d = ArtifactDir(str(tmp_path))
    assert d.path == tmp_path and d == ArtifactDir(tmp_path)
    assert d.output_notebook("nb") == tmp_path / "nb_output.ipynb"
    assert d.output_html("nb") == tmp_path / "nb_output.html"
    assert d.output_html("nb").match(artifacts.OUTPUT_HTML_GLOB)
    assert d.record("test") == tmp_path / "steps" / "test.json"
    assert [p.name for p in d.test_outputs] == [
        "coverage.xml", "pytest_results.xml", "pytest_report.html", "pytest_output.log"]
    assert d.junit_xml in d.test_outputs and d.coverage_xml in d.test_outputs
    assert [p.name for p in d.summary_outputs] == ["summary.json", "STEP_SUMMARY.md", "index.html"]
    assert {d.papermill_log.name, d.nbconvert_log.name, d.telemetry.name} == {
        "papermill.log", "jupyter_nbconvert.log", "telemetry.json"}


def test_a_run_dir_holds_notebook_dirs_and_its_own_files(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert (run.run_json.name, run.config_json.name, run.work.name) == ("run.json", "config.json", ".work")
    assert run.notebook("a") == ArtifactDir(tmp_path / "a")
    assert run.notebook_work("a") == tmp_path / ".work" / "a"
    assert run.notebook_dirs() == []
    run.notebook("b").records.mkdir(parents=True)
    run.notebook("a").records.mkdir(parents=True)
    (tmp_path / "not-a-notebook").mkdir()
    assert run.notebook_dirs() == [run.notebook("a"), run.notebook("b")]
    assert RunDir(tmp_path / "absent").notebook_dirs() == []
