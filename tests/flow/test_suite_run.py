"""A whole suite through `gpuflow run` with real kernels, nbconvert and
pytest: skipped notebooks are listed with their reason and never fail the
run, findings reach every summary, --plan prints the packing."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest

from gpuflow.core import artifacts
from gpuflow.flow import history
from gpuflow.run import main

pytestmark = pytest.mark.usefixtures("steps_present")
OK = "print('RESULT=', n * 2)"


def notebook(path: Path, *cells: str, meta: dict[str, Any] | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if meta is not None:
        nb.metadata["gpuflow"] = meta
    nb.cells.append(nbformat.v4.new_code_cell("n = 1", metadata={"tags": ["parameters"]}))
    nb.cells += [nbformat.v4.new_code_cell(src) for src in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLOW_CACHE_DIR", str(tmp_path / "cache"))


def suite(repo: Path) -> None:
    """A RAPIDS-style suite: a multi-GPU folder, a marker-skipped folder, a
    nightly-only notebook, one skipped by metadata, and two that run."""
    notebook(repo / "basics" / "a.ipynb", OK)
    notebook(repo / "basics" / "warns.ipynb", "import warnings, sys\nwarnings.warn('old API', FutureWarning)",
             "print('to stderr', file=sys.stderr)", OK)
    notebook(repo / "basics" / "nightly.ipynb", OK, meta={"run_types": ["nightly"]})
    notebook(repo / "basics" / "broken.ipynb", "raise SystemExit(3)", meta={"skip": "upstream bug: see the tracker"})
    notebook(repo / "mnmg" / "MNMG_kmeans.ipynb", OK, meta={"requires": {"gpus": 2}})
    notebook(repo / "wip" / "draft.ipynb", "raise ValueError('unfinished')")
    (repo / "wip" / "SKIP_CI_TESTING").write_text("")
    notebook(repo / "excluded" / "x.ipynb", "raise ValueError('must not run')")


def test_a_suite_lists_skips_with_reasons_and_findings(tmp_path: Path, test_repo: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    repo, out = tmp_path / "nbs", tmp_path / "out"
    suite(repo)
    code = main(["--repo", str(repo), "--test-repo", str(test_repo), "--out", str(out), "--gpu", "off",
                 "--notebooks", "**/*.ipynb", "--exclude", "excluded/*", "--jobs", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "2 of 2 notebooks passed; 4 skipped" in printed
    assert "skipped (needs 2 GPUs; 0 visible)" in printed  # the status table gives the reason
    run_dir = only_run(out)
    assert not (run_dir / "x").exists()  # excluded: not part of the run at all
    summary = json.loads((run_dir / artifacts.SUMMARY_JSON).read_text())
    reasons = {name: s["skip_reason"] for name, s in summary["notebooks"].items() if s["status"] == "skipped"}
    assert reasons == {"nightly": "runs in nightly runs only; this is a ci run",
                       "broken": "upstream bug: see the tracker",
                       "MNMG_kmeans": "needs 2 GPUs; 0 visible",
                       "draft": "SKIP_CI_TESTING in wip/"}
    for name in reasons:
        assert summary["notebooks"][name]["exit_code"] == 0
        assert "Skipped: " in (run_dir / name / artifacts.STEP_SUMMARY_MD).read_text()
    warns = summary["notebooks"]["warns"]
    assert warns["status"] == "success"
    assert (warns["findings"]["warnings"], warns["findings"]["stderr_lines"]) >= (1, 2)
    assert "FutureWarning: old API" in warns["findings"]["warning_examples"][0]["text"]
    run_md = (run_dir / artifacts.STEP_SUMMARY_MD).read_text()
    assert "needs 2 GPUs; 0 visible" in run_md and "warning(s)" in run_md
    assert "Findings in the outputs" in (run_dir / "warns" / artifacts.STEP_SUMMARY_MD).read_text()
    page = (run_dir / artifacts.INDEX_HTML).read_text()
    assert "SKIP_CI_TESTING in wip/" in page
    assert "FutureWarning" in (run_dir / "warns" / artifacts.INDEX_HTML).read_text()
    # every run records what each notebook used, keyed by path and digest
    stored = json.loads(history.path().read_text())["notebooks"]
    assert set(stored) == {"basics/a.ipynb", "basics/warns.ipynb"}


def test_fail_on_warnings_exits_1(tmp_path: Path, test_repo: Path) -> None:
    repo, out = tmp_path / "nbs", tmp_path / "out"
    notebook(repo / "w.ipynb", "import warnings\nwarnings.warn('careful')", OK)
    code = main(["--repo", str(repo), "--test-repo", str(test_repo), "--out", str(out), "--gpu", "off",
                 "--notebooks", "w.ipynb", "--fail-on-warnings"])
    assert code == 1
    run = json.loads((only_run(out) / artifacts.RUN_JSON).read_text())
    assert run["notebooks"][0]["failed_step"] == "findings"
    assert json.loads((only_run(out) / "w" / artifacts.SUMMARY_JSON).read_text())["status"] == "failed"


def test_a_run_where_every_notebook_is_skipped_exits_0_and_says_so(tmp_path: Path, test_repo: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    repo, out = tmp_path / "nbs", tmp_path / "out"
    notebook(repo / "n.ipynb", OK, meta={"run_types": ["weekly"]})
    code = main(["--repo", str(repo), "--test-repo", str(test_repo), "--out", str(out), "--gpu", "off",
                 "--notebooks", "n.ipynb", "--run-type", "nightly"])
    assert code == 0
    assert "every notebook was skipped" in capsys.readouterr().out
    summary = json.loads((only_run(out) / artifacts.SUMMARY_JSON).read_text())
    assert summary["status"] == "skipped" and summary["exit_code"] == 0
    assert "Every notebook was skipped" in (only_run(out) / artifacts.STEP_SUMMARY_MD).read_text()


def test_everything_excluded_is_a_usage_error(tmp_path: Path, test_repo: Path) -> None:
    repo = tmp_path / "nbs"
    notebook(repo / "a.ipynb", OK)
    assert main(["--repo", str(repo), "--test-repo", str(test_repo), "--out", str(tmp_path / "o"), "--gpu", "off",
                 "--notebooks", "*.ipynb", "--exclude", "*"]) == 2


def test_plan_prints_one_group_per_gpu_from_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "nbs"
    names = [f"nb{i}" for i in range(4)]
    for name in names:
        notebook(repo / f"{name}.ipynb", OK)
    notebook(repo / "big.ipynb", OK, meta={"requires": {"gpus": 2}})
    from gpuflow.flow import config as cfgmod

    cfg = cfgmod.resolve(env={}, cli={"notebooks": ["*.ipynb"], "repo": str(repo)}).config
    for name in names[:3]:  # nb3 has no history: it gets a whole GPU
        history.record(*history.key_for(cfg, repo / f"{name}.ipynb", f"{name}.ipynb"),
                       history.Measurement(rmm_peak_bytes=3 << 30, duration_s=20.0))
    code = main(["--repo", str(repo), "--notebooks", "*.ipynb", "--plan-devices", "2x80GiB"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["groups"]) == 2
    placed = {p["notebook"]: p for g in plan["groups"] for p in g["placements"]}
    assert placed["nb3.ipynb"]["need_bytes"] is None and placed["nb0.ipynb"]["pool_cap_bytes"] > 3 << 30
    assert plan["not_packed"] == ["big.ipynb"] and plan["skipped"] == []
    assert sorted(nb for g in plan["groups"] for nb in g["notebooks"]) == [f"{n}.ipynb" for n in names]
    assert main(["--repo", str(repo), "--notebooks", "*.ipynb", "--plan-devices", "2xlots"]) == 2


FAKE_SMI = """#!/bin/sh
case "$1" in
  -L) echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-fake)";;
  --query-gpu=*) echo "0, NVIDIA H100 80GB HBM3, 81559, 580.65.06";;
  *) echo "| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: 13.0 |";;
esac
"""


def fake_h100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU is the one fake: an nvidia-smi on PATH that lists one H100; the kernels run on the CPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_pack_shares_a_gpu_and_retries_an_out_of_memory_notebook_alone(
        tmp_path: Path, test_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_h100(tmp_path, monkeypatch)
    repo, out = tmp_path / "nbs", tmp_path / "out"
    marker = tmp_path / "ran-once"
    for i in range(3):
        notebook(repo / f"p{i}.ipynb", "import os; print('RESULT=', os.environ['CUDA_VISIBLE_DEVICES'])")
    # out of memory the first time only, as a notebook that outgrew its measurement
    notebook(repo / "grows.ipynb", f"import pathlib; m = pathlib.Path({str(marker)!r})",
             "if not m.exists():\n    m.write_text('x')\n    raise MemoryError('std::bad_alloc: out_of_memory')", OK)
    from gpuflow.flow import config as cfgmod

    cfg = cfgmod.resolve(env={}, cli={"notebooks": ["*.ipynb"], "repo": str(repo)}).config
    for name in ("p0", "p1", "grows"):  # p2 has no history: it runs alone and is measured
        history.record(*history.key_for(cfg, repo / f"{name}.ipynb", f"{name}.ipynb"),
                       history.Measurement(rmm_peak_bytes=1 << 30, duration_s=5.0))
    code = main(["--repo", str(repo), "--test-repo", str(test_repo), "--out", str(out), "--notebooks", "*.ipynb",
                 "--pack"])
    assert code == 0
    run_dir = only_run(out)
    packed = json.loads((run_dir / artifacts.SUMMARY_JSON).read_text())["run"]["packed"]
    assert packed["p2"]["share_bytes"] is None and packed["p0"]["share_bytes"] > 1 << 30
    assert "out of memory" in packed["grows"]["retried"] and packed["p0"]["retried"] is None
    assert "ran again alone" in (run_dir / artifacts.STEP_SUMMARY_MD).read_text()
    stored = json.loads(history.path().read_text())["notebooks"]
    assert {"p0.ipynb", "p1.ipynb", "p2.ipynb", "grows.ipynb"} <= set(stored)


def test_a_notebook_that_needs_two_gpus_holds_two_pinned(tmp_path: Path, test_repo: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fake_h100(tmp_path, monkeypatch)
    repo, out = tmp_path / "nbs", tmp_path / "out"
    show = "import os; print('RESULT=', 'CVD=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"
    notebook(repo / "wide.ipynb", show, meta={"requires": {"gpus": 2}})
    notebook(repo / "narrow.ipynb", show)
    code = main(["--repo", str(repo), "--test-repo", str(test_repo), "--out", str(out), "--notebooks", "*.ipynb",
                 "--gpus", "0,1"])
    assert code == 0
    run_dir = only_run(out)
    assert "CVD=0,1" in (run_dir / "wide" / "wide_output.ipynb").read_text()
    run = json.loads((run_dir / artifacts.RUN_JSON).read_text())
    assert {n["name"]: n["slot"] for n in run["notebooks"]}["wide"] == "gpu0+gpu1"
    assert "wide" in run["slots"]["gpu0"]["notebooks"] and "wide" in run["slots"]["gpu1"]["notebooks"]
