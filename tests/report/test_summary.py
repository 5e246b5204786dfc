"""The summary, from an artifact dir the real steps filled: convert, stage, test."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gpuflow import convert, stage, summary
from gpuflow import test as testrun
from gpuflow.core import record
from gpuflow.gpu import telemetry
from tests.report.conftest import EXAMPLE_SUITE, executed_notebook

MIB = 1 << 20
# written by the real telemetry code, so the summary reads the schema it writes
TELEMETRY = telemetry.summarize(
    [{"t": 0.0, "memory_used": 500 * MIB, "utilization": 10.0},
     {"t": 5.0, "memory_used": 20480 * MIB, "utilization": 95.0},
     {"t": 10.0, "memory_used": 8000 * MIB, "utilization": 45.0}],
    "NVIDIA H100 80GB HBM3", 80 * 1024 * MIB,
    [{"cell": 1, "peak_bytes": 0, "total_bytes": 0}, {"cell": 2, "peak_bytes": 3 << 30, "total_bytes": 4 << 30},
     {"cell": 3, "peak_bytes": 1 << 30, "total_bytes": 1 << 30}], 0.25)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An artifact dir as `gpuflow run` leaves it, from real step CLIs."""
    base = tmp_path_factory.mktemp("artifacts")
    art = base / "scrna_preprocessing"
    art.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPUFLOW_CACHE_DIR", str(base / "cache"))
        nb = executed_notebook(art / "scrna_preprocessing_output.ipynb")
        (art / "papermill.log").write_text("papermill ran\n")
        record.write(art, record.StepRecord(
            name="execute", status="success", exit_code=0, duration_s=42.5, started_at="2026-01-01T00:00:00",
            details={"output": str(nb), "log": str(art / "papermill.log"), "cells": 4, "executed_cells": 4,
                     "failed_cell": None, "error": None, "duration_s": 42.5}))
        assert convert.main([str(nb)]) == 0
        assert stage.main(["--html", str(nb.with_suffix(".html")), "--repo", str(EXAMPLE_SUITE),
                           "--dest", str(base / "repo")]) == 0
        assert testrun.main([str(base / "repo"), "--marker", "single_cell", "--out-dir", str(art),
                             "--no-install"]) == 0
    (art / "telemetry.json").write_text(json.dumps(TELEMETRY))
    yield art


@pytest.fixture
def art(filled: Path, tmp_path: Path) -> Path:
    copy = tmp_path / filled.name
    shutil.copytree(filled, copy)
    return copy


def test_all_records_give_success_and_junit_counts(art: Path) -> None:
    result = summary.write_summary(art)
    data = json.loads((art / "summary.json").read_text())
    assert data["status"] == "success" and data["exit_code"] == 0 and result.status == "success"
    assert [s["name"] for s in data["steps"]] == ["execute", "convert", "stage", "test"]
    suite = ET.parse(art / "pytest_results.xml").getroot().find("testsuite")
    assert suite is not None
    assert data["tests"]["passed"] == int(suite.get("tests", 0)) - int(suite.get("failures", 0)) == 5
    assert data["gpu"]["name"] == "NVIDIA H100 80GB HBM3"
    # the device's memory in use (NVML) and what the notebook allocated (RMM), in bytes, each named
    assert data["gpu"]["device_memory_used_peak_bytes"] == 20480 * MIB
    assert data["gpu"]["rmm_allocated_peak_bytes"] == 3 << 30
    assert data["gpu"]["heaviest_cells"] == [{"cell": 2, "rmm_peak_bytes": 3 << 30},
                                             {"cell": 3, "rmm_peak_bytes": 1 << 30}]
    assert data["gpu"]["mean_utilization_pct"] == 50.0
    paths = {a["path"]: a for a in data["artifacts"]}
    assert {"scrna_preprocessing_output.html", "pytest_report.html", "coverage.xml", "telemetry.json"} <= set(paths)
    assert len(paths["coverage.xml"]["sha256"]) == 64
    md = (art / "STEP_SUMMARY.md").read_text()
    assert "SUCCESS (exit 0)" in md and "| ✅ Passed | 5 |" in md and "| 🔶 XFailed | 0 |" in md
    assert "NVIDIA H100 80GB HBM3" in md and "4 of 4 executed" in md
    assert "| GPU memory in use, peak (NVML; includes an RMM pool's reservation) | 20.00 GiB of 80.00 GiB |" in md
    assert "| GPU memory allocated by the notebook, peak (RMM) | 3.00 GiB |" in md
    # Markdown cells escape brackets (no links from notebook text): it renders as "In [2] 3.00 GiB, ..."
    assert "| Heaviest cells (RMM peak) | In \\[2\\] 3.00 GiB, In \\[3\\] 1.00 GiB |" in md
    assert "<svg" in (art / "index.html").read_text()
    assert "<table>" in result._repr_html_()


def test_a_failed_step_makes_the_summary_fail(art: Path) -> None:
    record.write(art, record.StepRecord(
        name="execute", status="failed", exit_code=1, duration_s=3.0, started_at="2026-01-01T00:00:00",
        error="gpuflow.execute: cell 7: \x1b[31mValueError\x1b[0m: boom",
        details={"cells": 10, "executed_cells": 7, "failed_cell": 7, "error": "ValueError: boom"}))
    data = json.loads(summary.main([str(art)]) == 0 and (art / "summary.json").read_text())
    assert data["status"] == "failed" and data["exit_code"] == 1
    step = data["steps"][0]
    assert step["status"] == "failed" and step["error"] == "gpuflow.execute: cell 7: ValueError: boom"
    md = (art / "STEP_SUMMARY.md").read_text()
    assert "FAILED (exit 1)" in md and "| Failing cell | cell 8 |" in md and "\x1b" not in md
    assert summary.main([str(art), "--exit-code"]) == 1


def test_a_failed_conversion_never_hides_the_execute_code(art: Path) -> None:
    record.write(art, record.StepRecord(name="execute", status="failed", exit_code=124, duration_s=9.0,
                                        started_at="2026-01-01T00:00:00", error="cell 3 timed out"))
    record.write(art, record.StepRecord(name="convert", status="failed", exit_code=2, duration_s=0.1,
                                        started_at="2026-01-01T00:00:09", error="unreadable notebook"))
    result = summary.write_summary(art)
    assert result.status == "failed" and result.exit_code == 124


def test_pipeline_status_failed_fails_a_run_without_records_of_it(art: Path, tmp_path: Path) -> None:
    run_dir = art.parent
    ok = summary.write_run_summary(run_dir, pipeline_status="Succeeded")
    assert ok.status == "success"
    results = tmp_path / "results"
    code = summary.main([str(run_dir), "--run", "--exit-code", "--pipeline-status", "Failed",
                         "--results-dir", str(results)])
    assert code == 1 and (results / "status").read_text() == "failed"
    data = json.loads((run_dir / "summary.json").read_text())
    assert any("pipeline reported a failed task" in m for m in data["missing"])


def test_missing_artifact_and_record_are_reported_not_a_crash(art: Path) -> None:
    (art / "pytest_report.html").unlink()
    (art / "steps" / "stage.json").unlink()
    (art / "telemetry.json").write_text("{ truncated")
    result = summary.write_summary(art)
    assert result.status == "failed"  # a step never reported
    assert "pytest_report.html" in result.missing and "steps/stage.json" in result.missing
    assert result.gpu is None
    md = (art / "STEP_SUMMARY.md").read_text()
    assert "### ⚠️ Missing" in md and "`pytest_report.html`" in md
    assert "Pytest report: <em>missing</em>" in (art / "index.html").read_text()


def test_a_papermill_log_named_after_its_notebook_is_linked(art: Path) -> None:
    # `gpuflow execute NB out/x_output.ipynb` names the log x.papermill.log, so that
    # several notebooks can share a folder; the page links it rather than calling it missing
    (art / "papermill.log").rename(art / "scrna.papermill.log")
    summary.write_summary(art)
    page = (art / "index.html").read_text()
    assert '<a href="scrna.papermill.log">Papermill log</a>' in page and "Papermill log: <em>missing</em>" not in page
    (art / "scrna.papermill.log").unlink()
    summary.write_summary(art)
    assert "Papermill log: <em>missing</em>" in (art / "index.html").read_text()


def test_a_hand_edited_record_is_read_not_a_crash(art: Path) -> None:
    # details of the wrong type read as absent; a status outside the vocabulary is no record at all
    record.write(art, record.StepRecord(
        name="execute", status="success", exit_code=0, duration_s=2.0, started_at="2026-01-01T00:00:00",
        details={"cells": "ten", "executed_cells": True, "duration_s": "slow", "output": 7, "failed_cell": None}))
    result = summary.write_summary(art)
    assert result.notebook == record.ExecuteDetails(duration_s=2.0)
    assert "Notebook duration | 2.0s" in (art / "STEP_SUMMARY.md").read_text()
    (art / "steps" / "stage.json").write_text(json.dumps(
        {"name": "stage", "status": "ok", "exit_code": 0, "duration_s": 1.0}))
    result = summary.write_summary(art)
    assert result.status == "failed" and "steps/stage.json" in result.missing


def test_empty_dir_is_failed_not_a_crash(tmp_path: Path) -> None:
    result = summary.write_summary(tmp_path)
    assert result.status == "failed" and result.tests is None
    assert "No JUnit XML" in (tmp_path / "STEP_SUMMARY.md").read_text()


def test_github_step_summary_append_and_tekton_results(art: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    gh = tmp_path / "gh_summary.md"
    gh.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(gh))
    results = tmp_path / "results"
    assert summary.main([str(art), "--results-dir", str(results)]) == 0
    text = gh.read_text()
    assert text.startswith("earlier step\n") and "SUCCESS (exit 0)" in text
    files = {p.name: p.read_text() for p in results.iterdir()}
    assert files["status"] == "success" and files["tests-passed"] == "5" and files["tests-failed"] == "0"
    assert files["summary-path"].endswith("summary.json")
    assert sum(p.stat().st_size for p in results.iterdir()) < 1024
    assert not any(v.endswith("\n") for v in files.values())


def test_run_summary_aggregates_notebooks(art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gh = tmp_path / "gh.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(gh))
    run_dir = art.parent
    failed = run_dir / "other_notebook"
    record.write(failed, record.StepRecord(name="execute", status="failed", exit_code=137, duration_s=1.0))
    result = summary.write_run_summary(run_dir)
    assert result.status == "failed" and result.exit_code == 137
    page = (run_dir / "index.html").read_text()
    assert 'href="scrna_preprocessing/index.html"' in page and 'href="other_notebook/index.html"' in page
    assert (failed / "summary.json").is_file()
    assert "| ❌ failed | other_notebook | 137 |" in (run_dir / "STEP_SUMMARY.md").read_text()
    text = gh.read_text()
    assert text.index("other_notebook | 137") < text.index("## ✅ scrna_preprocessing: SUCCESS")


def test_run_summary_scoped_to_named_notebooks_and_exported(art: Path, tmp_path: Path) -> None:
    """A reused run dir keeps another run's notebook: --notebooks leaves it out,
    a named notebook without records fails the run, --export-dir copies the reports."""
    run_dir = art.parent
    record.write(run_dir / "older_run_notebook", record.StepRecord(
        name="execute", status="failed", exit_code=1, duration_s=1.0))
    out = tmp_path / "lasting" / "run-1"
    assert summary.main([str(run_dir), "--run", "--exit-code", "--notebooks", "scrna", "--suffix", "_preprocessing",
                         "--export-dir", str(out)]) == 0
    data = json.loads((run_dir / "summary.json").read_text())
    assert data["status"] == "success" and set(data["notebooks"]) == {"scrna_preprocessing"}
    assert (out / "summary.json").read_text() == (run_dir / "summary.json").read_text()
    assert (out / "scrna_preprocessing" / "pytest_results.xml").is_file() and not (out / "older_run_notebook").exists()
    assert summary.main([str(run_dir), "--run", "--exit-code", "--notebooks", "scrna_preprocessing", "never_ran",
                         "--export-dir", ""]) == 1
    data = json.loads((run_dir / "summary.json").read_text())
    assert "never_ran: no step records (the notebook never ran)" in data["missing"]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("href", "src") and v]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (make test installs it when it can)")
    return exe


def _load(exe: str, page: Path, profile: Path) -> tuple[str, str]:
    done = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    return done.stdout, done.stderr


def _console(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if re.search(r":CONSOLE[:(]", ln)]


@pytest.mark.chromium
def test_index_html_in_headless_chromium(art: Path, tmp_path: Path) -> None:
    exe = _chromium()
    summary.write_summary(art)
    page = art / "index.html"
    dom, stderr = _load(exe, page, tmp_path / "profile")
    assert "scrna_preprocessing" in dom and "<svg" in dom, stderr[-2000:]
    assert not _console(stderr), _console(stderr)
    links = _Links()
    links.feed(dom)
    assert links.urls, "index.html links nothing"
    for url in links.urls:
        assert "://" not in url, f"external reference {url}: the page must be self-contained"
        assert (art / url).is_file(), f"broken link {url}"
    # the console check is not vacuous: a page with a script error is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFn()</script></body></html>")
    assert _console(_load(exe, bad, tmp_path / "profile2")[1])
