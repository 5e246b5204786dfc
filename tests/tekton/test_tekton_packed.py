"""The packed Pipeline, run end to end by the harness: gpuflow-plan groups
the notebooks (one group per GPU, an array result), the matrix runs one
group per TaskRun with `gpuflow run --pack`, the summary in finally reads
every group's run as one."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import nbformat
import pytest
import tekton_rules as rules
from harness import Harness

from tests.conftest import ROOT, make_git_repo

MISSING = [s for s in ("clone", "run", "summary") if importlib.util.find_spec(f"gpuflow.{s}") is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"step modules not merged yet: {', '.join(MISSING)}"),
]
SUITE = ROOT / "examples" / "notebook-tests"


def _notebook(meta: dict[str, object] | None = None) -> str:
    cells = [nbformat.v4.new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("print('gpuflow-scrna: filtered 5 cells x 5 genes')"),
             nbformat.v4.new_code_cell("%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3]);"),
             nbformat.v4.new_code_cell("print('gpuflow-scrna: done')")]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if meta:
        nb.metadata["gpuflow"] = meta
    return nbformat.writes(nb)


def test_packed_pipeline_runs_one_group_per_gpu(tmp_path: Path, manifests: rules.Manifests) -> None:
    make_git_repo(tmp_path / "notebooks-repo", {
        "notebooks/a.ipynb": _notebook(), "notebooks/b.ipynb": _notebook(), "notebooks/c.ipynb": _notebook(),
        "notebooks/later.ipynb": _notebook({"run_types": ["nightly"]}),
    })
    shutil.copytree(SUITE, tmp_path / "suite", ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    make_git_repo(tmp_path / "suite", {})
    run_doc = next(d for d in manifests.runs if d["metadata"]["generateName"] == "gpuflow-packed-")
    params = {p["name"]: p["value"] for p in run_doc["spec"]["params"]}
    params |= {"repo-url": (tmp_path / "notebooks-repo").as_uri(), "tests-url": (tmp_path / "suite").as_uri(),
               "notebooks": ["a", "b", "c", "later"], "devices": "2x80GiB", "gpu": "auto"}
    run_doc["spec"]["params"] = [{"name": k, "value": v} for k, v in params.items()]
    harness = Harness(manifests, tmp_path / "cluster", secrets={("github-token", "token"): "not-a-real-token"})
    run = harness.run_pipelinerun(run_doc)
    assert run.status == "Completed", run.log()  # Completed: the root step, off by default, was skipped
    groups = json.loads(run.runs("plan")[0].results["groups"])
    # never measured: each notebook gets a GPU of its own, spread over the two; the skipped one rides along
    assert len(groups) == 2 and sorted(",".join(groups).split(",")) == [
        f"{n}.ipynb" for n in ("a", "b", "c", "later")]
    assert [r.status for r in run.runs("run-group")] == ["Succeeded", "Succeeded"]
    ws = tmp_path / "cluster" / "volumes" / "shared"
    whole = json.loads((ws / "out" / "summary.json").read_text())
    assert whole["status"] == "success", whole
    assert set(whole["notebooks"]) == {"a", "b", "c", "later"}
    assert whole["notebooks"]["later"]["skip_reason"] == "runs in nightly runs only; this is a ci run"
    # each run recorded what its notebooks used: the next plan packs by it
    history = json.loads((ws / "cache" / "gpuflow" / "notebook-history.json").read_text())
    assert set(history["notebooks"]) == {"a.ipynb", "b.ipynb", "c.ipynb"}
