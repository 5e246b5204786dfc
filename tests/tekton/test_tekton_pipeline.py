"""The shipped Pipeline, run end to end by the harness: a local git repo of
notebooks, the bundled test suite (examples/notebook-tests) as the test repo,
matrix over notebooks, summary in finally. Every run uses the Pipeline's
default params with the package indexes blocked and a `poetry` that refuses
to run, as on a GPU node without network: nothing may install at run time."""
from __future__ import annotations

import importlib.util
import json
import os
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
BLOCKED_INDEXES = {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                   "POETRY_REPOSITORIES_PYPI_URL": "http://127.0.0.1:9/simple", "UV_OFFLINE": "1"}
REFUSE = "#!/bin/sh\necho \"$0 was called at run time\" >&2\nexit 97\n"


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


def _repos(tmp_path: Path, notebooks: dict[str, str], requirements: str = "") -> tuple[str, str]:
    make_git_repo(tmp_path / "notebooks-repo", {f"notebooks/{n}.ipynb": text for n, text in notebooks.items()})
    shutil.copytree(SUITE, tmp_path / "suite", ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    with open(tmp_path / "suite" / "requirements.txt", "a", encoding="utf-8") as fh:
        fh.write(requirements)
    make_git_repo(tmp_path / "suite", {})
    return (tmp_path / "notebooks-repo").as_uri(), (tmp_path / "suite").as_uri()


def _offline(tmp_path: Path) -> dict[str, str]:
    """No package index answers and `poetry` refuses, as on a GPU node without network."""
    bin_dir = tmp_path / "refusing-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "poetry").write_text(REFUSE, encoding="utf-8")
    (bin_dir / "poetry").chmod(0o755)
    return {**BLOCKED_INDEXES, "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])}


def _run(tmp_path: Path, manifests: rules.Manifests, notebooks: dict[str, str], *, requirements: str = "",
         bind: tuple[dict[str, object], ...] = (), **extra: object) -> tuple[PipelineRun, Path]:
    """The full run with only what a local test must change: the repos, the
    notebooks, no GPU required, short cell timeouts; everything else is the
    Pipeline's defaults."""
    repo, tests = _repos(tmp_path, notebooks, requirements)
    run_doc = next(d for d in manifests.runs if d["metadata"]["generateName"].startswith("gpuflow-scrna-full"))
    params = {p["name"]: p["value"] for p in run_doc["spec"]["params"]}
    params |= {"repo-url": repo, "revision": "", "tests-url": tests, "notebooks": list(notebooks),
               "gpu": "auto", "cell-timeout": "300", **extra}
    run_doc["spec"]["params"] = [{"name": k, "value": v} for k, v in params.items()]
    run_doc["spec"]["workspaces"] += list(bind)
    harness = Harness(manifests, tmp_path / "cluster", secrets=SECRETS, env=_offline(tmp_path))
    run = harness.run_pipelinerun(run_doc)
    return run, tmp_path / "cluster" / "volumes" / "shared"


def test_pipeline_runs_notebooks_end_to_end(tmp_path: Path, manifests: rules.Manifests) -> None:
    dataset = tmp_path / "cells.txt"
    dataset.write_text("42")
    run, ws = _run(tmp_path, manifests, {"tiny_a": _notebook(), "tiny_b": _notebook()},
                   **{"dataset-url": dataset.as_uri(), "dataset-path": "h5/cells.txt"})
    # Completed, not Succeeded: the opt-in root task was skipped by its `when`
    assert run.status == "Completed", run.log()
    assert run.runs("init-workspace")[0].status == "None"
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
    assert whole["status"] == "success" and "Tekton tasks: Completed" in whole["title"]
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
    """Skipped by default, run when asked; the workspace check runs either way."""
    run, _ = _run(tmp_path / "default", manifests, {"tiny": _notebook()}, **{"revision": "nope"})
    assert run.runs("init-workspace")[0].status == "None"
    assert run.runs("check-workspace")[0].status == "Succeeded"
    assert run.runs("clone-notebooks")[0].status == "Failed"  # it still ran after the skipped init
    run, _ = _run(tmp_path / "asked", manifests, {"tiny": _notebook()}, **{"fix-ownership": "true", "revision": "nope"})
    assert [run.runs(t)[0].status for t in ("init-workspace", "check-workspace")] == ["Succeeded", "Succeeded"]


def _never_installed(run: PipelineRun) -> None:
    log = run.log()
    assert "was called at run time" not in log and "pip install" not in log, log


def test_default_params_install_nothing(tmp_path: Path, manifests: rules.Manifests) -> None:
    run, ws = _run(tmp_path, manifests, {"tiny": _notebook()})
    assert run.status == "Completed", run.log()
    _never_installed(run)
    tests = json.loads((ws / "out" / "tiny" / "summary.json").read_text())["tests"]
    assert tests["passed"] >= 3 and tests["failed"] == 0


def test_missing_test_dependency_is_one_line(tmp_path: Path, manifests: rules.Manifests) -> None:
    run, _ = _run(tmp_path, manifests, {"tiny": _notebook()}, requirements="gpuflow-never-baked-dependency==1.0\n")
    tested = run.runs("stage-and-test")[0]
    assert tested.status == "Failed" and tested.steps[-1].exit_code == 2, run.log()
    assert "missing test dependency gpuflow-never-baked-dependency==1.0; bake it into the image" in tested.log()
    assert "Traceback" not in tested.log()
    _never_installed(run)


def test_reused_claim_is_summarised_for_this_run_and_reports_are_exported(
        tmp_path: Path, manifests: rules.Manifests) -> None:
    shared = tmp_path / "cluster" / "volumes" / "shared"
    stale = shared / "out" / "old_notebook" / "steps"  # another run's notebook, which failed
    stale.mkdir(parents=True)
    (stale / "execute.json").write_text(json.dumps({"name": "execute", "status": "failed", "exit_code": 1,
                                                     "duration_s": 1.0, "error": "an older run"}))
    for day in ("01", "02", "03"):  # backups an older run's clone left
        (shared / f"src_backup_202401{day}T000000Z").mkdir(parents=True)
    (shared / "src").mkdir()
    artifacts = {"name": "artifacts", "persistentVolumeClaim": {"claimName": "gpuflow-artifacts"}}
    run, ws = _run(tmp_path, manifests, {"tiny": _notebook()}, bind=(artifacts,), **{"keep-backups": "1"})
    assert run.status == "Completed", run.log()
    whole = json.loads((ws / "out" / "summary.json").read_text())
    assert whole["status"] == "success" and set(whole["notebooks"]) == {"tiny"}
    assert len(list(ws.glob("src_backup_*"))) == 1
    exported = tmp_path / "cluster" / "volumes" / "artifacts" / "harness-run"
    for name in ("summary.json", "STEP_SUMMARY.md", "index.html", "tiny/tiny_output.html",
                 "tiny/pytest_results.xml", "tiny/pytest_report.html", "tiny/summary.json"):
        assert (exported / name).is_file(), name
    assert not (exported / "old_notebook").exists()
