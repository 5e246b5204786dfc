"""Summarise an artifact dir from what the steps recorded: summary.json,
STEP_SUMMARY.md (GitHub style) and a self-contained index.html.

The status is computed from the step records, never assumed: the old
workflows printed "COMPLETED" whatever happened. A missing record or
artifact is reported, never a crash.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gpuflow.core import artifacts, cli, errors, fsutil, record
from gpuflow.core.fsutil import atomic_write_text, sha256_file
from gpuflow.core.log import log
from gpuflow.report.junit import parse_junit
from gpuflow.report.model import Summary

OUTPUTS = ("summary.json", "STEP_SUMMARY.md", "index.html")
EXPECTED_STEPS = ("execute", "convert", "stage", "test")
ORDER = ("preflight", "clone", "download", "execute", "convert", "stage", "test")
TEST_FILES = ("coverage.xml", "pytest_results.xml", "pytest_report.html", "pytest_output.log")
# step record detail keys that name a file the step wrote
FILE_KEYS = ("output", "html", "log")
MIB = 1 << 20
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _step_row(rec: record.StepRecord) -> dict[str, Any]:
    error = _ANSI.sub("", rec.error).splitlines()[0] if rec.error else None
    return {"name": rec.name, "status": rec.status, "exit_code": rec.exit_code,
            "duration_s": rec.duration_s, "error": error}


def _steps(records: list[record.StepRecord]) -> tuple[list[dict[str, Any]], list[str]]:
    rows = [_step_row(r) for r in records]
    seen = {r.name for r in records}
    missing = [name for name in EXPECTED_STEPS if name not in seen]
    for name in missing:
        rows.append({"name": name, "status": "skipped", "exit_code": None, "duration_s": None,
                     "error": "no step record: the step did not run, or died before writing it"})
    rows.sort(key=lambda r: ORDER.index(r["name"]) if r["name"] in ORDER else len(ORDER))
    return rows, [f"steps/{name}.json" for name in missing]


def _tests(artifact_dir: Path) -> dict[str, Any] | None:
    junit = artifact_dir / "pytest_results.xml"
    if not junit.is_file():
        return None
    log_file = artifact_dir / "pytest_output.log"
    output = log_file.read_text(encoding="utf-8", errors="replace") if log_file.is_file() else ""
    try:
        counts = parse_junit(junit, output)
    except errors.InputError as exc:
        return {"error": str(exc)}
    return {**{k: getattr(counts, k) for k in ("passed", "failed", "errors", "skipped", "xfailed", "xpassed")},
            "total": counts.total, "failing": list(counts.failing)}


def _notebook(records: list[record.StepRecord]) -> dict[str, Any]:
    rec = next((r for r in records if r.name == "execute"), None)
    if rec is None:
        return {}
    keys = ("input", "output", "cells", "executed_cells", "failed_cell", "error", "duration_s")
    facts = {k: rec.details.get(k) for k in keys if k in rec.details}
    facts.setdefault("duration_s", rec.duration_s)
    return facts


def gpu_facts(path: Path) -> dict[str, Any] | None:
    """GPU name, peak memory and mean utilisation from telemetry.json (the
    schema `gpuflow.gpu.telemetry.summarize` writes), plus the memory series in
    MiB for the chart. None when there is no (readable) telemetry."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    samples = [s for s in data.get("samples") or [] if isinstance(s, dict)]
    series = [(float(s.get("t", i)), float(s["memory_used"]) / MIB)
              for i, s in enumerate(samples) if isinstance(s.get("memory_used"), (int, float))]
    peak = data.get("peak_memory_bytes")
    return {
        "name": data.get("gpu") if isinstance(data.get("gpu"), str) else None,
        "peak_memory_mib": round(peak / MIB, 1) if isinstance(peak, (int, float)) else None,
        "mean_utilization_pct": data.get("mean_utilization_pct"),
        "samples": len(samples),
        "memory_series": series,
    }


def _locate(recorded: str, artifact_dir: Path) -> Path:
    # artifact dirs get moved (uploaded, downloaded, copied): a file of the
    # same name in the dir being summarised wins over the recorded path
    path = Path(recorded)
    here = artifact_dir / path.name
    return path if not here.is_file() and path.is_absolute() and path.is_file() else here


def _expected_files(artifact_dir: Path, records: list[record.StepRecord]) -> list[Path]:
    files: list[Path] = []
    for rec in records:
        if rec.name == "test":  # its record lives beside its outputs
            files += [artifact_dir / name for name in TEST_FILES]
        files += [_locate(str(rec.details[k]), artifact_dir) for k in FILE_KEYS if rec.details.get(k)]
    return files


def _artifacts(artifact_dir: Path, records: list[record.StepRecord]) -> tuple[list[dict[str, Any]], list[str]]:
    found = {p for p in artifact_dir.iterdir() if p.is_file() and p.name not in OUTPUTS}
    expected = _expected_files(artifact_dir, records)
    found |= {p for p in expected if p.is_file()}
    rows = [{"path": _rel(p, artifact_dir), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(found)]
    missing = sorted({_rel(p, artifact_dir) for p in expected if not p.is_file()})
    return rows, missing


def _rel(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def notebook_exit_code(records: list[record.StepRecord]) -> int:
    """A failed execute decides the notebook's code: the report steps that run
    after it (convert, stage, test) are consequences and must not hide it.
    Otherwise the worst step's code wins."""
    executed = [r for r in records if r.name == "execute" and r.exit_code != 0]
    if executed:
        return executed[-1].exit_code
    return errors.worst([r.exit_code for r in records])


def pipeline_failed(status: str | None) -> bool:
    """Tekton's $(tasks.status) is Succeeded, Completed, None or Failed."""
    return (status or "").strip().lower() == "failed"


def build_summary(artifact_dir: Path, *, title: str | None = None) -> Summary:
    """Read the records and files of `artifact_dir` into a `Summary`."""
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.is_dir():
        raise errors.InputError(f"{artifact_dir}: no such artifact dir")
    records = record.read_all(artifact_dir)
    steps, missing_records = _steps(records)
    artifacts, missing_files = _artifacts(artifact_dir, records)
    code = notebook_exit_code(records)
    # nothing failed but something never reported: that is not a success
    if code == 0 and (missing_records or not records):
        code = errors.StepFailed.exit_code
    return Summary(
        title=title or artifact_dir.resolve().name, status="success" if code == 0 else "failed",
        exit_code=code, steps=steps, tests=_tests(artifact_dir), notebook=_notebook(records),
        gpu=gpu_facts(artifact_dir / "telemetry.json"), artifacts=artifacts,
        missing=missing_records + missing_files,
    )


def write_summary(artifact_dir: Path, *, title: str | None = None, append: bool = True) -> Summary:
    """Write summary.json, STEP_SUMMARY.md and index.html into `artifact_dir`;
    append the Markdown to $GITHUB_STEP_SUMMARY when it is set (and `append`)."""
    from gpuflow.report import render

    summary = build_summary(artifact_dir, title=title)
    markdown = render.markdown(summary)
    atomic_write_text(Path(artifact_dir) / "summary.json", summary.to_json())
    atomic_write_text(Path(artifact_dir) / "STEP_SUMMARY.md", markdown)
    atomic_write_text(Path(artifact_dir) / "index.html", render.page(summary, Path(artifact_dir)))
    if append:
        append_step_summary(markdown)
    return summary


def append_step_summary(markdown: str) -> None:
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")


def notebook_dirs(run_dir: Path, notebooks: Sequence[str] | None = None) -> tuple[list[Path], list[str]]:
    """The per-notebook dirs of `run_dir` that have step records, and the
    names in `notebooks` that have none. With `notebooks`, only those dirs:
    a reused workspace keeps other runs' dirs, which must not count."""
    # no run dir at all (the clone failed before any notebook ran) is a failed run, not a crash
    dirs = [a.path for a in artifacts.RunDir(run_dir).notebook_dirs()]
    if notebooks is None:
        return dirs, []
    wanted = dict.fromkeys(notebooks)
    return [d for d in dirs if d.name in wanted], [n for n in wanted if n not in {d.name for d in dirs}]


def write_run_summary(run_dir: Path, *, title: str | None = None, pipeline_status: str | None = None,
                      notebooks: Sequence[str] | None = None) -> Summary:
    """Summarise each per-notebook dir of `run_dir` (only those named in
    `notebooks`, when given), then the run as a whole: a table of notebooks
    with their status and links."""
    from gpuflow.report import render

    run_dir = Path(run_dir)
    dirs, absent = notebook_dirs(run_dir, notebooks)
    parts = [(d.name, write_summary(d, append=False)) for d in dirs]
    # a notebook of this run that left no records failed, whatever the others did
    codes = [s.exit_code for _, s in parts] + [errors.StepFailed.exit_code] * bool(absent)
    code = errors.worst(codes) if codes else errors.StepFailed.exit_code
    steps = [{"name": name, "status": s.status, "exit_code": s.exit_code, "duration_s": None,
              "error": next((r["error"] for r in s.steps if r["error"]), None)} for name, s in parts]
    missing = [f"{name}: no step records (the notebook never ran)" for name in absent]
    missing += [] if parts else ["no per-notebook dirs with step records"]
    if pipeline_failed(pipeline_status) and code == 0:
        # a task died without leaving a record (OOM kill, eviction): the
        # pipeline's own verdict must still fail the summary
        code = errors.StepFailed.exit_code
        missing.append("the pipeline reported a failed task that left no step record")
    summary = Summary(title=title or "gpuflow run", status="success" if code == 0 else "failed",
                      exit_code=code, steps=steps, tests=None, notebook={}, gpu=None, artifacts=[],
                      missing=missing)
    markdown = render.run_markdown(summary, parts)
    atomic_write_text(run_dir / "summary.json", json.dumps(
        {**asdict(summary), "notebooks": {n: asdict(s) for n, s in parts}}, indent=2, default=str))
    atomic_write_text(run_dir / "STEP_SUMMARY.md", markdown)
    atomic_write_text(run_dir / "index.html", render.run_page(summary, parts))
    # the run table first, then each notebook's details
    append_step_summary("\n".join([markdown, *((d / "STEP_SUMMARY.md").read_text(encoding="utf-8")
                                              for d in dirs)]))
    return summary


def export(run_dir: Path, dest: Path, dirs: Sequence[Path]) -> None:
    """Copy the run's summaries and the notebook dirs `dirs` to `dest`, storage
    that outlives the run (Tekton's per-run claim is deleted when it ends)."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, dest / name)
        for d in dirs:
            shutil.copytree(d, dest / d.name, dirs_exist_ok=True, copy_function=shutil.copyfile)
    except (OSError, shutil.Error) as exc:
        raise errors.InfraError(f"exporting the reports to {dest} failed: {exc}") from None


def write_results(results_dir: Path, summary: Summary, summary_path: Path) -> None:
    """Tekton results: tiny files, no trailing newline (Tekton caps results at ~4 KB)."""
    tests = summary.tests or {}
    values = {"status": summary.status, "tests-passed": str(tests.get("passed", 0)),
              "tests-failed": str(tests.get("failed", 0) + tests.get("errors", 0)),
              "summary-path": str(summary_path)[:512]}
    fsutil.write_results(results_dir, values)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact_dir", type=Path, help="a notebook's artifact dir (or a run dir with --run)")
    p.add_argument("--title", default=None, help="heading of the summary (default: the dir name)")
    p.add_argument("--results-dir", type=Path, default=None, help="write Tekton results here")
    p.add_argument("--run", action="store_true", help="aggregate the per-notebook dirs of a run dir")
    p.add_argument("--pipeline-status", default=None,
                   help="Tekton's $(tasks.status): 'Failed' fails the summary even if no record says why")
    p.add_argument("--exit-code", action="store_true",
                   help="exit with the summarised status (default: 0 once the summary is written)")
    p.add_argument("--notebooks", nargs="*", default=None, metavar="STEM",
                   help="with --run: summarise only these notebooks' dirs (STEM + --suffix); one without records fails")
    p.add_argument("--suffix", default="", help="with --notebooks: the artifact suffix of the dirs, e.g. _lite")
    p.add_argument("--export-dir", default=None, metavar="DIR",
                   help="with --run: then copy the summaries and notebook dirs to DIR (empty: no export)")


def _impl(args: argparse.Namespace) -> cli.Outcome:
    notebooks = None if args.notebooks is None else [f"{stem}{args.suffix}" for stem in args.notebooks]
    if args.run:
        summary = write_run_summary(args.artifact_dir, title=args.title, pipeline_status=args.pipeline_status,
                                    notebooks=notebooks)
    else:
        summary = write_summary(args.artifact_dir, title=args.title)
    if args.results_dir is not None:
        write_results(args.results_dir, summary, Path(args.artifact_dir) / "summary.json")
    if args.run and args.export_dir:  # Tekton passes "" for an unbound optional workspace
        export(args.artifact_dir, Path(args.export_dir), notebook_dirs(args.artifact_dir, notebooks)[0])
    log.info(str(summary))
    print(Path(args.artifact_dir) / "index.html")
    return cli.Outcome(exit_code=summary.exit_code if args.exit_code else 0,
                       details={"status": summary.status, "exit_code": summary.exit_code})


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser("gpuflow.summary", "Write summary.json, STEP_SUMMARY.md and index.html from step records.")
    add_arguments(p)
    # no record of its own: the summary must not summarise itself
    return cli.run_cli("gpuflow.summary", p, argv, _impl)


if __name__ == "__main__":
    raise SystemExit(main())
