"""`gpuflow run` end to end with real kernels, nbconvert and pytest."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpuflow.core.fsutil import atomic_write_text
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
    runs = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
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
    assert b["steps"]["convert"] == "success" and b["steps"]["test"] == "success"
    for name in ("b_output.ipynb", "b_output.html", "papermill.log", "jupyter_nbconvert.log", "coverage.xml",
                 "pytest_results.xml", "pytest_report.html", "pytest_output.log", "STEP_SUMMARY.md",
                 "summary.json", "index.html"):
        assert (run_dir / "b" / name).is_file(), name
    assert "execute" in (run_dir / "b" / "STEP_SUMMARY.md").read_text()
    # two CPU slots, both used; the run-level index exists
    assert set(data["slots"]) == {"cpu0", "cpu1"}
    assert all(s["notebooks"] for s in data["slots"].values())
    assert data["makespan_s"] > 0 and (run_dir / "index.html").is_file()
    run_summary = json.loads((run_dir / "summary.json").read_text())
    assert run_summary["exit_code"] == 1 and run_summary["run"]["makespan_s"] == data["makespan_s"]
    assert "Makespan" in (run_dir / "STEP_SUMMARY.md").read_text()


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
        "execute": "kept", "convert": "success", "stage": "success", "test": "success", "summary": "success"}
    assert (nb_dir / "nb_output.html").is_file() and (nb_dir / "pytest_results.xml").is_file()
    # changed parameters are changed inputs: execute runs again
    assert main(["--resume", str(run_dir), "-p", "n", "5"]) == 0
    assert run_json(run_dir)["notebooks"][0]["steps"]["execute"] == "success"
    assert "10" in (nb_dir / "nb_output.ipynb").read_text()


def test_resume_redoes_the_tests_when_their_coverage_is_gone(tmp_path: Path, test_repo: Path) -> None:
    repo = tmp_path / "nbs"
    notebook(repo / "nb.ipynb", OK)
    out = tmp_path / "out"
    assert main([*base_args(repo, test_repo, out), "--notebooks", "nb.ipynb"]) == 0
    run_dir = only_run(out)
    coverage = run_dir / "nb" / "coverage.xml"
    tested = json.loads((run_dir / "nb" / "steps" / "test.json").read_text())
    assert str(coverage) in tested["details"]["outputs"]
    coverage.unlink()
    assert main(["--resume", str(run_dir)]) == 0
    steps = run_json(run_dir)["notebooks"][0]["steps"]
    assert steps["execute"] == "kept" and steps["test"] != "kept", steps
    assert coverage.is_file()
    again = json.loads((run_dir / "nb" / "steps" / "test.json").read_text())
    assert again["started_at"] != tested["started_at"]


def test_the_schedule_is_in_every_run_summary(tmp_path: Path, test_repo: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    gh = tmp_path / "gh.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(gh))
    repo = tmp_path / "nbs"
    notebook(repo / "nb.ipynb", OK)
    out = tmp_path / "out"
    assert main([*base_args(repo, test_repo, out), "--notebooks", "nb.ipynb"]) == 0
    run_dir = only_run(out)
    makespan = run_json(run_dir)["makespan_s"]
    assert json.loads((run_dir / "summary.json").read_text())["run"]["makespan_s"] == makespan
    for text in (gh.read_text(), (run_dir / "STEP_SUMMARY.md").read_text()):
        assert f"Makespan {makespan:.1f}s over 1 slot(s)." in text and "| cpu0 | nb |" in text
    assert gh.read_text().count("Makespan") == 1  # appended once, with the run's table
    assert "<caption>Schedule: Makespan" in (run_dir / "index.html").read_text()


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


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_kernel_writes_summaries_and_exits(tmp_path: Path, test_repo: Path,
                                                              signum: int, code: int) -> None:
    repo = tmp_path / "nbs"
    notebook(repo / "slow.ipynb", "import time; print('started', flush=True); time.sleep(300)")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-m", "gpuflow", "run", *base_args(repo, test_repo, out),
                              "--notebooks", "slow.ipynb"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    for line in child.stdout:  # wait until the cell is running in the kernel
        if "started" in line:
            break
    child.send_signal(signum)
    rest, _ = child.communicate(timeout=120)
    assert child.returncode == code, rest
    run_dir = only_run(out)
    data = run_json(run_dir)
    assert data["exit_code"] == code and data["stopped"]
    assert data["notebooks"][0]["steps"]["execute"] == "failed"
    assert (run_dir / "slow" / "slow_output.ipynb").is_file()  # the partial notebook was saved
    assert (run_dir / "slow" / "summary.json").is_file() and (run_dir / "index.html").is_file()
    assert "index.html" in rest


@pytest.mark.slow
def test_embedded_default_runs_the_bundled_notebook_and_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from gpuflow.flow import config

    root = config.demo_root()
    if not (root / config.BUNDLED_NOTEBOOK).is_file() or not (root / config.BUNDLED_TESTS_REL).is_dir():
        pytest.skip("the bundled notebook or test suite is not merged yet")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert main([]) == 0
    run_dir = only_run(tmp_path / "gpuflow-out")
    printed = capsys.readouterr().out
    assert "scrna_preprocessing" in printed and f"index.html: {run_dir / 'index.html'}" in printed
    nb_dir = run_dir / "scrna_preprocessing"
    for name in ("scrna_preprocessing_output.ipynb", "scrna_preprocessing_output.html", "papermill.log",
                 "jupyter_nbconvert.log", "coverage.xml", "pytest_results.xml", "pytest_report.html",
                 "pytest_output.log", "STEP_SUMMARY.md", "summary.json", "index.html"):
        assert (nb_dir / name).is_file(), name
    assert json.loads((nb_dir / "summary.json").read_text())["tests"]["passed"] > 0


def test_fail_fast_starts_no_further_notebook(tmp_path: Path, test_repo: Path) -> None:
    repo = tmp_path / "nbs"
    notebook(repo / "a.ipynb", "raise RuntimeError('first')")
    notebook(repo / "b.ipynb", OK)
    out = tmp_path / "out"
    assert main([*base_args(repo, test_repo, out), "--notebooks", "a.ipynb", "b.ipynb", "--fail-fast",
                 "--skip-tests-on-failure"]) == 1
    data = run_json(only_run(out))
    assert [n["name"] for n in data["notebooks"]] == ["a"]
    assert data["notebooks"][0]["steps"]["test"] == "skipped"


def test_gpus_pin_one_kernel_per_device(tmp_path: Path, test_repo: Path) -> None:
    # pinning is only an environment variable: it can be checked without a GPU
    repo = tmp_path / "nbs"
    show = "import os; print('RESULT=', 'CVD=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"
    for name in ("x", "y", "z"):
        notebook(repo / f"{name}.ipynb", show)
    out = tmp_path / "out"
    assert main([*base_args(repo, test_repo, out), "--notebooks", "*.ipynb", "--gpus", "0,1"]) == 0
    run_dir = only_run(out)
    data = run_json(run_dir)
    assert set(data["slots"]) == {"gpu0", "gpu1"}
    for nb in data["notebooks"]:
        device = data["slots"][nb["slot"]]["gpu"]
        assert f"CVD={device}" in (run_dir / nb["name"] / f"{nb['name']}_output.ipynb").read_text()


def test_git_repo_with_its_own_config_and_a_dataset(tmp_path: Path, test_repo: Path) -> None:
    import functools
    import hashlib
    import http.server
    import threading

    from tests.conftest import make_git_repo

    served = tmp_path / "served"
    served.mkdir()
    (served / "cells.txt").write_text("42\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cells.txt"
        digest = hashlib.sha256(b"42\n").hexdigest()
        origin = tmp_path / "origin"
        notebook(origin / "nb.ipynb", "print('RESULT=', open('data/cells.txt').read().strip())")
        make_git_repo(origin, {"pyproject.toml": (
            '[tool.gpuflow]\nnotebooks = ["nb.ipynb"]\nmarker = "single_cell"\n'
            f'[[tool.gpuflow.datasets]]\nurl = "{url}"\ndest = "data/cells.txt"\nsha256 = "{digest}"\n')})
        out = tmp_path / "out"
        # datasets are the runner's to name: this repo is trusted by the runner
        assert main(["--repo", origin.as_uri(), "--test-repo", str(test_repo), "--out", str(out),
                     "--gpu", "off", "--trust-repo-config"]) == 0
    finally:
        server.shutdown()
    run_dir = only_run(out)
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["sources"]["notebooks"].endswith("pyproject.toml")
    assert "RESULT= 42" in (run_dir / "nb" / "nb_output.html").read_text()
    assert json.loads((run_dir / "steps" / "datasets.json").read_text())["status"] == "success"


def test_resume_after_sigkill_right_after_execute(tmp_path: Path, test_repo: Path) -> None:
    import time

    repo = tmp_path / "nbs"
    notebook(repo / "nb.ipynb", OK)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-m", "gpuflow", "run", *base_args(repo, test_repo, out),
                              "--notebooks", "nb.ipynb"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/nb/steps/execute.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(child.pid, signal.SIGKILL)  # the whole run dies, as in a lost node
    child.wait()
    run_dir = only_run(out)
    executed = json.loads((run_dir / "nb" / "steps" / "execute.json").read_text())
    assert main(["--resume", str(run_dir)]) == 0
    assert json.loads((run_dir / "nb" / "steps" / "execute.json").read_text())["started_at"] == executed["started_at"]
    assert run_json(run_dir)["notebooks"][0]["steps"]["execute"] == "kept"


def test_execute_process_killed_is_recorded_and_reported(tmp_path: Path, test_repo: Path) -> None:
    # the kernel kills its parent, the gpuflow.execute process: no record from it, so run writes one
    repo = tmp_path / "nbs"
    notebook(repo / "nb.ipynb", "import os, signal; os.kill(os.getppid(), signal.SIGKILL)")
    out = tmp_path / "out"
    assert main([*base_args(repo, test_repo, out), "--notebooks", "nb.ipynb"]) == 137
    run_dir = only_run(out)
    rec = json.loads((run_dir / "nb" / "steps" / "execute.json").read_text())
    assert (rec["status"], rec["exit_code"]) == ("failed", 137)
    assert run_json(run_dir)["notebooks"][0]["failed_step"] == "execute"
    assert (run_dir / "nb" / "summary.json").is_file()


def _gate_processes(under: Path) -> list[str]:
    """Waiting pytests started for a run under `under` (their report paths lie
    there): other runs on the same machine are not this test's business."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "gpuflow_pytest_gate" in cmd and str(under) in cmd:
            found.append(cmd)
    return found


def test_early_pytest_is_let_go_or_ended_never_left_behind(tmp_path: Path, test_repo: Path) -> None:
    # pytest starts while the notebook executes and waits at a gate: the good
    # notebook's tests run, the failed notebook's (--skip-tests-on-failure)
    # never collect, leave no reports, and no waiting pytest outlives the run
    repo = tmp_path / "nbs"
    notebook(repo / "good.ipynb", OK)
    notebook(repo / "bad.ipynb", "raise ValueError('boom')")
    out = tmp_path / "out"
    code = main([*base_args(repo, test_repo, out), "--notebooks", "good.ipynb", "bad.ipynb",
                 "--skip-tests-on-failure"])
    assert code == 1
    run_dir = only_run(out)
    assert (run_dir / "good" / "pytest_results.xml").is_file()
    assert json.loads((run_dir / "good" / "steps" / "test.json").read_text())["exit_code"] == 0
    assert not (run_dir / "bad" / "pytest_results.xml").exists()
    assert json.loads((run_dir / "bad" / "steps" / "test.json").read_text())["status"] == "skipped"
    assert _gate_processes(tmp_path) == []


def test_gate_plugin_holds_pytest_until_go(tmp_path: Path) -> None:
    from gpuflow.test import run_tests

    repo = tmp_path / "suite"
    (repo / "t").mkdir(parents=True)
    (repo / "t" / "test_x.py").write_text("def test_ok():\n    assert True\n")
    gate = tmp_path / "gate"
    import threading

    result: dict[str, object] = {}
    worker = threading.Thread(target=lambda: result.update(r=run_tests(
        repo, marker="not slow", out_dir=tmp_path / "o1", install=False, gate=gate)))
    worker.start()
    worker.join(timeout=3)
    assert worker.is_alive(), "pytest must wait at the gate"
    # as the run opens it: in one rename, so the waiting pytest never reads a half-written gate
    atomic_write_text(gate, "go")
    worker.join(timeout=120)
    assert result["r"].exit_code == 0 and result["r"].passed == 1  # type: ignore[attr-defined]
    gate2 = tmp_path / "gate2"
    gate2.write_text("the notebook failed")
    ended = run_tests(repo, marker="not slow", out_dir=tmp_path / "o2", install=False, gate=gate2)
    assert ended.passed == 0 and ended.exit_code == 2
    assert "tests not run: the notebook failed" in (tmp_path / "o2" / "pytest_output.log").read_text()
