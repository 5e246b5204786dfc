"""`gpuflow run` end to end with real kernels, nbconvert and pytest."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuflow.run import main

pytestmark = pytest.mark.usefixtures("steps_present")


def notebook(path: Path, *cells: str, parameters: str = "n = 1") -> Path:
    """A notebook with a `parameters` cell and code cells."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    nb.cells += [nbformat.v4.new_code_cell(src) for src in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


OK = "print('RESULT=', n * 2)"


def base_args(repo: Path, tests: Path, out: Path) -> list[str]:
    return ["--repo", str(repo), "--test-repo", str(tests), "--out", str(out), "--gpu", "off"]


def test_many_notebooks_one_fails_others_finish(tmp_path: Path, test_repo: Path) -> None:
    repo = tmp_path / "nbs"
    notebook(repo / "a.ipynb", OK)
    notebook(repo / "b.ipynb", "print('RESULT=', 1)", "raise ValueError('boom')")
    notebook(repo / "sub" / "c.ipynb", OK)
    out = tmp_path / "out"
    code = main([*base_args(repo, test_repo, out), "--notebooks", "a.ipynb", "b.ipynb", "sub/*.ipynb",
                 "--jobs", "2"])
    assert code == 1
    run_dir = only_run(out)
    data = run_json(run_dir)
    by_name = {n["name"]: n for n in data["notebooks"]}
    assert set(by_name) == {"a", "b", "c"}
    assert by_name["a"]["exit_code"] == 0 and by_name["c"]["exit_code"] == 0
    b = by_name["b"]
    assert (b["exit_code"], b["failed_step"]) == (1, "execute")
    assert "ValueError" in (b["error"] or "")
    # the failed notebook still has its HTML, its tests and its summary
    assert b["steps"]["convert"] == "ok" and b["steps"]["test"] == "ok"
    for name in ("b_output.ipynb", "b_output.html", "papermill.log", "jupyter_nbconvert.log", "coverage.xml",
                 "pytest_results.xml", "pytest_report.html", "pytest_output.log", "STEP_SUMMARY.md",
                 "summary.json", "index.html"):
        assert (run_dir / "b" / name).is_file(), name
    assert "execute" in (run_dir / "b" / "STEP_SUMMARY.md").read_text()
    # two CPU slots, both used; the run-level index exists
    assert set(data["slots"]) == {"cpu0", "cpu1"}
    assert all(s["notebooks"] for s in data["slots"].values())
    assert data["makespan_s"] > 0 and (run_dir / "index.html").is_file()


def test_resume_after_a_crash_keeps_the_executed_notebook(tmp_path: Path, test_repo: Path) -> None:
    repo = tmp_path / "nbs"
    notebook(repo / "nb.ipynb", OK)
    out = tmp_path / "out"
    args = [*base_args(repo, test_repo, out), "--notebooks", "nb.ipynb"]
    assert main(args) == 0
    run_dir = only_run(out)
    nb_dir = run_dir / "nb"
    for name in ("nb_output.ipynb", "nb_output.html", "pytest_results.xml", "summary.json"):
        assert (nb_dir / name).is_file(), name  # full profile: no _lite anywhere
    executed = json.loads((nb_dir / "steps" / "execute.json").read_text())
    # a crash right after execute: nothing after it was written
    for name in ("nb_output.html", "steps/convert.json", "steps/test.json", "summary.json", "pytest_results.xml"):
        (nb_dir / name).unlink()
    assert main(["--resume", str(run_dir)]) == 0
    again = json.loads((nb_dir / "steps" / "execute.json").read_text())
    assert again["started_at"] == executed["started_at"]
    assert run_json(run_dir)["notebooks"][0]["steps"] == {
        "execute": "kept", "convert": "ok", "stage": "ok", "test": "ok", "summary": "ok"}
    assert (nb_dir / "nb_output.html").is_file() and (nb_dir / "pytest_results.xml").is_file()
    # changed parameters are changed inputs: execute runs again
    assert main(["--resume", str(run_dir), "-p", "n", "5"]) == 0
    assert run_json(run_dir)["notebooks"][0]["steps"]["execute"] == "ok"
    assert "10" in (nb_dir / "nb_output.ipynb").read_text()


def test_lite_names_and_html_template(tmp_path: Path, test_repo: Path) -> None:
    repo = tmp_path / "nbs"
    notebook(repo / "scrna.ipynb", OK)
    out = tmp_path / "out"
    assert main([*base_args(repo, test_repo, out), "--notebooks", "scrna.ipynb", "--profile", "lite",
                 "--html-name", "std_{stem}{lite}.html", "--max-cells", "100"]) == 0
    run_dir = only_run(out)
    nb_dir = run_dir / "scrna_lite"
    assert (nb_dir / "scrna_lite_output.ipynb").is_file() and (nb_dir / "scrna_lite_output.html").is_file()
    staged = run_dir / ".work" / "scrna_lite" / "test-repo" / "input"
    assert [p.name for p in staged.iterdir()] == ["std_scrna_lite.html"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["profile"] == "lite" and config["sources"]["max_cells"] == "cli --max-cells"


def test_bad_notebook_path_exits_2_with_a_run_summary(tmp_path: Path, test_repo: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    (tmp_path / "nbs").mkdir()
    assert main([*base_args(tmp_path / "nbs", test_repo, out), "--notebooks", "missing.ipynb"]) == 2
    assert "missing.ipynb" in capsys.readouterr().err
    assert run_json(only_run(out))["exit_code"] == 2
