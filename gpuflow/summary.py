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
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpuflow.core import artifacts, errors, fsutil, record
from gpuflow.core.artifacts import ArtifactDir, RunDir
from gpuflow.core.fsutil import atomic_write_text, sha256_file
from gpuflow.core.log import log, strip_ansi
from gpuflow.core.step import Step, Verdict
from gpuflow.report.findings import Findings, scan
from gpuflow.report.junit import TestCounts, parse_junit
from gpuflow.report.model import ArtifactFile, CellMemory, GpuFacts, RunSummary, Schedule, StepRow, Summary, TestsUnreadable

EXPECTED_STEPS = ("execute", "convert", "stage", "test")
ORDER = ("preflight", "clone", "download", "execute", "convert", "stage", "test")
MIB = 1 << 20


def _first_line(error: str | None) -> str | None:
    return strip_ansi(error).splitlines()[0] if error else None


def _steps(out: ArtifactDir, records: list[record.StepRecord]) -> tuple[list[StepRow], list[str]]:
    rows = [StepRow(name=r.name, status=r.status, exit_code=r.exit_code, duration_s=r.duration_s,
                    error=_first_line(r.error), started_at=r.started_at,
                    note=r.view(record.SkipDetails).reason if r.status == "skipped" else None) for r in records]
    seen = {r.name for r in records}
    missing = [name for name in EXPECTED_STEPS if name not in seen]
    rows += [StepRow(name=name, status="skipped", exit_code=None, duration_s=None,
                     error="no step record: the step did not run, or died before writing it") for name in missing]
    rows.sort(key=lambda r: ORDER.index(r.name) if r.name in ORDER else len(ORDER))
    return rows, [_rel(out.record(name), out.path) for name in missing]


def _tests(out: ArtifactDir) -> TestCounts | TestsUnreadable | None:
    if not out.junit_xml.is_file():
        return None
    output = out.pytest_log.read_text(encoding="utf-8", errors="replace") if out.pytest_log.is_file() else ""
    try:
        return parse_junit(out.junit_xml, output)
    except errors.InputError as exc:
        return TestsUnreadable(error=str(exc))


def _notebook(records: list[record.StepRecord]) -> record.ExecuteDetails | None:
    rec = next((r for r in records if r.name == "execute"), None)
    if rec is None:
        return None
    facts = rec.view(record.ExecuteDetails)
    return facts if facts.duration_s is not None else replace(facts, duration_s=rec.duration_s)


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def gpu_facts(path: Path) -> GpuFacts | None:
    """GPU name, the two peak memories (NVML's device memory in use, RMM's
    notebook allocation), utilisation, the heaviest cells and the series for
    the chart, from telemetry.json (the schema `gpuflow.gpu.telemetry.summarize`
    writes). None when there is no (readable) telemetry."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    samples = [s for s in data.get("samples") or [] if isinstance(s, dict) and _number(s.get("t")) is not None]
    series = [(float(s["t"]), float(s["memory_used"]) / MIB) for s in samples if _number(s.get("memory_used")) is not None]
    utilization = [(float(s["t"]), float(s["utilization"])) for s in samples if _number(s.get("utilization")) is not None]
    rows = [c for c in data.get("cells") or [] if isinstance(c, dict) and _number(c.get("peak_bytes")) is not None]
    peaks = [(int(c["cell"]) if _number(c.get("cell")) is not None else -1, int(c["peak_bytes"])) for c in rows]
    spans = [(int(c["cell"]), float(c["start"]), float(c["end"])) for c in data.get("cell_spans") or []
             if isinstance(c, dict) and all(_number(c.get(k)) is not None for k in ("cell", "start", "end"))]
    heaviest = sorted((p for p in peaks if p[1] > 0), key=lambda p: -p[1])[:5]
    used, rmm, total = (_number(data.get(k)) for k in ("peak_memory_bytes", "rmm_peak_bytes", "memory_total"))
    if rmm is None and peaks:  # written before telemetry.json carried the RMM peak itself
        rmm = max(p[1] for p in peaks)
    return GpuFacts(
        name=data["gpu"] if isinstance(data.get("gpu"), str) else None,
        memory_total_bytes=int(total) if total is not None else None,
        device_memory_used_peak_bytes=int(used) if used is not None else None,
        rmm_allocated_peak_bytes=int(rmm) if rmm is not None else None,
        mean_utilization_pct=_number(data.get("mean_utilization_pct")),
        samples=len(samples), memory_series=series, utilization_series=utilization,
        heaviest_cells=[CellMemory(cell=c if c >= 0 else None, rmm_peak_bytes=b) for c, b in heaviest],
        cell_spans=spans, cell_peaks=peaks,
    )


def _locate(recorded: str, artifact_dir: Path) -> Path:
    # artifact dirs get moved (uploaded, downloaded, copied): a file of the
    # same name in the dir being summarised wins over the recorded path
    path = Path(recorded)
    here = artifact_dir / path.name
    return path if not here.is_file() and path.is_absolute() and path.is_file() else here


def _expected_files(out: ArtifactDir, records: list[record.StepRecord]) -> list[Path]:
    files: list[Path] = []
    for rec in records:
        if rec.name == "test":  # its record lives beside its outputs
            files += out.test_outputs
        elif rec.name == "execute":
            files += [_locate(p, out.path) for p in rec.view(record.ExecuteDetails).files]
        elif rec.name == "convert":
            files += [_locate(p, out.path) for p in rec.view(record.ConvertDetails).files]
    return files


def _artifacts(out: ArtifactDir, records: list[record.StepRecord]) -> tuple[list[ArtifactFile], list[str]]:
    found = {p for p in out.path.iterdir() if p.is_file() and p.name not in artifacts.SUMMARY_OUTPUTS}
    expected = _expected_files(out, records)
    found |= {p for p in expected if p.is_file()}
    rows = [ArtifactFile(path=_rel(p, out.path), bytes=p.stat().st_size, sha256=sha256_file(p))
            for p in sorted(found)]
    missing = sorted({_rel(p, out.path) for p in expected if not p.is_file()})
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


def skip_reason(records: list[record.StepRecord]) -> str | None:
    """Why the notebook was not run on purpose (its execute step is recorded
    as skipped, by selection or unmet requirements), or None."""
    rec = next((r for r in records if r.name == "execute"), None)
    if rec is None or rec.status != "skipped":
        return None
    return rec.view(record.SkipDetails).reason or "skipped"


def _findings(out: ArtifactDir, records: list[record.StepRecord]) -> Findings | None:
    executed = next((r for r in records if r.name == "execute"), None)
    output = executed.view(record.ExecuteDetails).output if executed is not None else None
    return scan(_locate(output, out.path)) if output else None


def build_summary(artifact_dir: Path, *, title: str | None = None, fail_on_warnings: bool = False) -> Summary:
    """Read the records and files of `artifact_dir` into a `Summary`; with
    `fail_on_warnings`, Python warnings in the outputs fail it (exit 1)."""
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.is_dir():
        raise errors.InputError(f"{artifact_dir}: no such artifact dir")
    records = record.read_all(artifact_dir)
    out = ArtifactDir(artifact_dir)
    files, missing_files = _artifacts(out, records)
    skipped = skip_reason(records)
    if skipped is not None:  # not run on purpose: no other step was expected to report
        steps = [StepRow(name=r.name, status=r.status, exit_code=r.exit_code, duration_s=r.duration_s,
                         error=skipped if r.name == "execute" else _first_line(r.error)) for r in records]
        return Summary(title=title or artifact_dir.resolve().name, status="skipped", exit_code=0, steps=steps,
                       tests=None, notebook=None, gpu=None, artifacts=files, skip_reason=skipped)
    steps, missing_records = _steps(out, records)
    code = notebook_exit_code(records)
    # nothing failed but something never reported: that is not a success
    if code == 0 and (missing_records or not records):
        code = errors.StepFailed.exit_code
    findings = _findings(out, records)
    missing = missing_records + missing_files
    if fail_on_warnings and findings is not None and findings.warnings and code == 0:
        code = errors.StepFailed.exit_code
        missing.append(f"{findings.warnings} Python warning(s) in the outputs (--fail-on-warnings)")
    return Summary(
        title=title or artifact_dir.resolve().name, status="success" if code == 0 else "failed",
        exit_code=code, steps=steps, tests=_tests(out), notebook=_notebook(records),
        gpu=gpu_facts(out.telemetry), artifacts=files, missing=missing, findings=findings,
    )


def _write(out: ArtifactDir, summary: Summary) -> str:
    """Write summary.json, STEP_SUMMARY.md and index.html; return the Markdown."""
    from gpuflow.report import render

    markdown = render.markdown(summary)
    atomic_write_text(out.summary_json, summary.to_json())
    atomic_write_text(out.step_summary, markdown)
    atomic_write_text(out.index_html, render.page(summary, out))
    return markdown


def write_summary(artifact_dir: Path, *, title: str | None = None, append: bool = True,
                  fail_on_warnings: bool = False) -> Summary:
    """Write summary.json, STEP_SUMMARY.md and index.html into `artifact_dir`;
    append the Markdown to $GITHUB_STEP_SUMMARY when it is set (and `append`)."""
    summary = build_summary(artifact_dir, title=title, fail_on_warnings=fail_on_warnings)
    markdown = _write(ArtifactDir(artifact_dir), summary)
    if append:
        append_step_summary(markdown)
    return summary


def append_step_summary(markdown: str) -> None:
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")


def notebook_dirs(run_dir: Path, notebooks: Sequence[str] | None = None) -> tuple[list[ArtifactDir], list[str]]:
    """The per-notebook dirs of `run_dir` that have step records, and the
    names in `notebooks` that have none. With `notebooks`, only those dirs:
    a reused workspace keeps other runs' dirs, which must not count."""
    dirs = RunDir(run_dir).notebook_dirs()
    if notebooks is None:
        return dirs, []
    wanted = dict.fromkeys(notebooks)
    return [d for d in dirs if d.path.name in wanted], [n for n in wanted if n not in {d.path.name for d in dirs}]


def write_run_summary(run_dir: Path, *, title: str | None = None, pipeline_status: str | None = None,
                      schedule: Schedule | None = None, notebooks: Sequence[str] | None = None,
                      fail_on_warnings: bool = False) -> RunSummary:
    """Summarise each per-notebook dir of `run_dir` (only those named in
    `notebooks`, when given), then the run as a whole: a table of notebooks
    with their status and links, and, from `gpuflow run`, its `schedule`.
    The run's Markdown, then each notebook's, goes to $GITHUB_STEP_SUMMARY once.
    With `fail_on_warnings`, Python warnings in a notebook's outputs fail it."""
    from gpuflow.report import render

    run = RunDir(run_dir)
    # no run dir at all (the clone failed before any notebook ran) is a failed run, not a crash
    dirs, absent = notebook_dirs(run_dir, notebooks)
    parts, markdowns = [], []
    for d in dirs:
        part = build_summary(d.path, fail_on_warnings=fail_on_warnings)
        markdowns.append(_write(d, part))
        parts.append((d.path.name, part))
    # a notebook of this run that left no records failed, whatever the others did
    codes = [s.exit_code for _, s in parts] + [errors.StepFailed.exit_code] * bool(absent)
    code = errors.worst(codes) if codes else errors.StepFailed.exit_code
    steps = [StepRow(name=name, status=s.status, exit_code=s.exit_code, duration_s=None,
                     error=next((r.error for r in s.steps if r.error), None)) for name, s in parts]
    missing = [f"{name}: no step records (the notebook never ran)" for name in absent]
    missing += [] if parts else ["no per-notebook dirs with step records"]
    if schedule is not None:
        # `gpuflow run` knows how it ended (a usage error before any notebook,
        # a SIGTERM, a failed run-level step): its exit code is the summary's
        code = schedule.exit_code
        missing = [] if (schedule.error or schedule.stopped) and not parts else missing
    if pipeline_failed(pipeline_status) and code == 0:
        # a task died without leaving a record (OOM kill, eviction): the
        # pipeline's own verdict must still fail the summary
        code = errors.StepFailed.exit_code
        missing.append("the pipeline reported a failed task that left no step record")
    every_skipped = bool(parts) and all(s.status == "skipped" for _, s in parts)
    summary = RunSummary(title=title or "gpuflow run",
                         status="failed" if code else "skipped" if every_skipped else "success",
                         exit_code=code, skip_reason="every notebook was skipped" if every_skipped and not code else None,
                         steps=steps, tests=None, notebook=None, gpu=None, artifacts=[],
                         missing=missing, notebooks=parts, schedule=schedule)
    markdown = render.run_markdown(summary)
    atomic_write_text(run.summary_json, summary.to_json())
    atomic_write_text(run.step_summary, markdown)
    atomic_write_text(run.index_html, render.run_page(summary))
    append_step_summary("\n".join([markdown, *markdowns]))
    return summary


def export(run: RunDir, dest: Path, dirs: Sequence[ArtifactDir]) -> None:
    """Copy the run's summaries and the notebook dirs `dirs` to `dest`, storage
    that outlives the run (Tekton's per-run claim is deleted when it ends)."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for path in run.summary_outputs:
            if path.is_file():
                shutil.copyfile(path, dest / path.name)
        for d in dirs:
            shutil.copytree(d.path, dest / d.path.name, dirs_exist_ok=True, copy_function=shutil.copyfile)
    except (OSError, shutil.Error) as exc:
        raise errors.InfraError(f"exporting the reports to {dest} failed: {exc}") from None


def write_results(results_dir: Path, summary: Summary, summary_path: Path) -> None:
    """Tekton results: tiny files, no trailing newline (Tekton caps results at ~4 KB)."""
    counts = summary.counts or TestCounts()
    values = {"status": summary.status, "tests-passed": str(counts.passed),
              "tests-failed": str(counts.failed + counts.errors), "summary-path": str(summary_path)[:512]}
    fsutil.write_results(results_dir, values)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact_dir", type=Path, help="a notebook's artifact dir (or a run dir with --run)")
    p.add_argument("--title", default=None, help="heading of the summary (default: the dir name)")
    p.add_argument("--results-dir", type=Path, default=None, help="write Tekton results here")
    p.add_argument("--run", action="store_true", help="aggregate the per-notebook dirs of a run dir")
    p.add_argument("--pipeline-status", default=None,
                   help="Tekton's $(tasks.status): 'Failed' fails the summary even if no record says why")
    p.add_argument("--fail-on-warnings", action="store_true",
                   help="Python warnings in a notebook's outputs fail its summary (exit 1 with --exit-code)")
    p.add_argument("--exit-code", action="store_true",
                   help="exit with the summarised status (default: 0 once the summary is written)")
    p.add_argument("--notebooks", nargs="*", default=None, metavar="STEM",
                   help="with --run: summarise only these notebooks' dirs (STEM + --suffix); one without records fails")
    p.add_argument("--suffix", default="", help="with --notebooks: the artifact suffix of the dirs, e.g. _lite")
    p.add_argument("--export-dir", default=None, metavar="DIR",
                   help="with --run: then copy the summaries and notebook dirs to DIR (empty: no export)")


def _call(args: argparse.Namespace) -> Summary:
    summary: Summary
    notebooks = None if args.notebooks is None else [f"{stem}{args.suffix}" for stem in args.notebooks]
    if args.run:
        summary = write_run_summary(args.artifact_dir, title=args.title, pipeline_status=args.pipeline_status,
                                    notebooks=notebooks, fail_on_warnings=args.fail_on_warnings)
    else:
        summary = write_summary(args.artifact_dir, title=args.title, fail_on_warnings=args.fail_on_warnings)
    if args.results_dir is not None:
        write_results(args.results_dir, summary, ArtifactDir(args.artifact_dir).summary_json)
    if args.run and args.export_dir:  # Tekton passes "" for an unbound optional workspace
        export(RunDir(args.artifact_dir), Path(args.export_dir), notebook_dirs(args.artifact_dir, notebooks)[0])
    log.info(str(summary))
    print(ArtifactDir(args.artifact_dir).index_html)
    return summary


STEP = Step(
    name="summary", description="Write summary.json, STEP_SUMMARY.md and index.html from step records.",
    add_arguments=add_arguments, call=_call,
    details=lambda summary: {"status": summary.status, "exit_code": summary.exit_code},
    # no record of its own: the summary must not summarise itself
    record_dir=lambda a: None,
    verdict=lambda args, summary: Verdict(exit_code=summary.exit_code if args.exit_code else 0),
)


def main(argv: Sequence[str] | None = None) -> int:
    return STEP.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
