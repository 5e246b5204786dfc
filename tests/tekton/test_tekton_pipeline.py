"""The shipped Pipeline, run end to end by the harness: a local git repo of
notebooks, the bundled test suite (examples/notebook-tests) as the test repo,
matrix over notebooks, summary in finally."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import nbformat
import pytest
import tekton_rules as rules
from harness import Harness, PipelineRun

from tests.conftest import ROOT, make_git_repo

STEPS = ("clone", "execute", "convert", "stage", "test", "summary")
MISSING = [s for s in STEPS if importlib.util.find_spec(f"gpuflow.{s}") is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"step modules not merged yet: {', '.join(MISSING)}"),
]
SUITE = ROOT / "examples" / "notebook-tests"
SECRETS = {("github-token", "token"): "not-a-real-token"}


def _notebook(*, fail: bool = False) -> str:
    tag = "gpuflow-scrna"  # spelled apart so the code cells do not print marker lines
    sources = [
        "import os\nif os.path.exists('h5/cells.txt'):  # the Pipeline's download\n"
        "    n_cells = int(open('h5/cells.txt').read())",
        f"tag = {tag[:7]!r} + {tag[7:]!r}\nprint(f'{{tag}}: filtered {{n_cells}} cells x 5 genes')",
        "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3]);",
        "raise RuntimeError('planted failure')" if fail else "print(f'{tag}: done')",
    ]
    cells = [nbformat.v4.new_code_cell("n_cells = 10", metadata={"tags": ["parameters"]}),
             *map(nbformat.v4.new_code_cell, sources)]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nbformat.writes(nb)


def _repos(tmp_path: Path, notebooks: dict[str, str]) -> tuple[str, str]:
    make_git_repo(tmp_path / "notebooks-repo", {f"notebooks/{n}.ipynb": text for n, text in notebooks.items()})
    shutil.copytree(SUITE, tmp_path / "suite", ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    make_git_repo(tmp_path / "suite", {})
    return (tmp_path / "notebooks-repo").as_uri(), (tmp_path / "suite").as_uri()


def _run(tmp_path: Path, manifests: rules.Manifests, notebooks: dict[str, str],
         **extra: object) -> tuple[PipelineRun, Path]:
    repo, tests = _repos(tmp_path, notebooks)
    run_doc = next(d for d in manifests.runs if d["metadata"]["generateName"].startswith("gpuflow-scrna-full"))
    params = {p["name"]: p["value"] for p in run_doc["spec"]["params"]}
    params |= {"repo-url": repo, "revision": "", "tests-url": tests, "notebooks": list(notebooks),
               "gpu": "auto", "cell-timeout": "300", "test-args": ["--no-install"], **extra}
    run_doc["spec"]["params"] = [{"name": k, "value": v} for k, v in params.items()]
    harness = Harness(manifests, tmp_path / "cluster", secrets=SECRETS)
    run = harness.run_pipelinerun(run_doc)
    return run, tmp_path / "cluster" / "volumes" / "shared"


def test_pipeline_runs_notebooks_end_to_end(tmp_path: Path, manifests: rules.Manifests) -> None:
    dataset = tmp_path / "cells.txt"
    dataset.write_text("42")
    run, ws = _run(tmp_path, manifests, {"tiny_a": _notebook(), "tiny_b": _notebook()},
                   **{"dataset-url": dataset.as_uri(), "dataset-path": "h5/cells.txt"})
    assert run.status == "Succeeded", run.log()
    assert run.runs("download")[0].status == "Succeeded"
    assert [r.status for r in run.runs("execute")] == ["Succeeded", "Succeeded"]
    assert run.results == {"status": "success"}
    summary = run.runs("summary")[0]
    assert summary.results["status"] == "success"
    assert sum(len(v.encode()) for v in summary.results.values()) < 4096
    for stem in ("tiny_a", "tiny_b"):
        out = ws / "out" / stem
        for name in (f"{stem}_output.ipynb", f"{stem}_output.html", "papermill.log", "coverage.xml",
                     "pytest_results.xml", "pytest_report.html", "pytest_output.log", "summary.json",
                     "STEP_SUMMARY.md", "index.html"):
            assert (out / name).is_file(), f"{stem}: {name} missing\n{run.log()}"
        assert (ws / "work" / stem / "tests" / "input").is_dir()
        tests = json.loads((out / "summary.json").read_text())["tests"]
        assert tests["passed"] >= 3 and tests["failed"] == 0, tests
    whole = json.loads((ws / "out" / "summary.json").read_text())
    assert whole["status"] == "success" and "Tekton tasks: Succeeded" in whole["title"]
    assert "filtered 42 cells" in (ws / "out" / "tiny_a" / "tiny_a_output.html").read_text()  # the dataset was read
    assert run.runs("clone-notebooks")[0].results["commit-sha"]


def test_failed_notebook_is_reported_not_hidden(tmp_path: Path, manifests: rules.Manifests) -> None:
    run, ws = _run(tmp_path, manifests, {"broken": _notebook(fail=True)})
    assert run.status == "Failed"
    assert run.runs("execute")[0].status == "Failed"
    assert run.runs("download")[0].status == "None"  # no dataset-url: skipped by its `when`
    assert run.runs("convert")[0].status == "None"  # not scheduled after the failure
    summary = run.runs("summary")[0]
    assert summary.steps[0].exit_code not in (0, None), summary.log()  # --exit-code: the summary fails too
    assert summary.results["status"] == "failed"
    whole = json.loads((ws / "out" / "summary.json").read_text())
    assert whole["status"] == "failed" and "Tekton tasks: Failed" in whole["title"]
    # the partial notebook and its log are kept
    assert (ws / "out" / "broken" / "broken_output.ipynb").is_file()
    assert (ws / "out" / "broken" / "papermill.log").is_file()


def test_bundled_scrna_notebook_through_the_pipeline(tmp_path: Path, manifests: rules.Manifests) -> None:
    bundled = ROOT / "notebooks" / "scrna_preprocessing.ipynb"
    if not bundled.is_file():
        pytest.skip("notebooks/scrna_preprocessing.ipynb is not merged yet (branch h/gpu)")
    run, ws = _run(tmp_path, manifests, {"scrna_preprocessing": bundled.read_text(encoding="utf-8")})
    out = ws / "out" / "scrna_preprocessing"
    assert [r.status for r in run.runs("execute") + run.runs("convert")] == ["Succeeded"] * 2, run.log()
    assert (out / "scrna_preprocessing_output.html").is_file()
    tests = json.loads((out / "summary.json").read_text())["tests"]
    assert tests["passed"] >= 3, run.log()
    # whatever the suite says, the run, the summary and the results agree on it
    ok = tests["failed"] == 0 and tests["errors"] == 0
    assert run.runs("stage-and-test")[0].status == ("Succeeded" if ok else "Failed")
    assert run.results == {"status": "success" if ok else "failed"}
    assert run.status == ("Completed" if ok else "Failed")


def test_failed_clone_still_gets_a_failed_summary(tmp_path: Path, manifests: rules.Manifests) -> None:
    run, ws = _run(tmp_path, manifests, {"tiny": _notebook()}, **{"revision": "no-such-branch"})
    assert run.runs("clone-notebooks")[0].status == "Failed"
    assert run.runs("clone-notebooks")[0].results["clone-status"] == "failed"
    assert {r.status for name in ("execute", "convert", "stage-and-test") for r in run.runs(name)} == {"None"}
    summary = run.runs("summary")[0]
    assert summary.results["status"] == "failed", summary.log()
    whole = json.loads((ws / "out" / "summary.json").read_text())
    assert "Tekton tasks: Failed" in whole["title"]


def test_root_step_can_be_skipped(tmp_path: Path, manifests: rules.Manifests) -> None:
    run, _ = _run(tmp_path, manifests, {"tiny": _notebook()}, **{"fix-ownership": "false", "revision": "nope"})
    assert run.runs("init-workspace")[0].status == "None"
    assert run.runs("clone-notebooks")[0].status == "Failed"  # it still ran after the skipped init
