"""Render a `Summary` as GitHub-style Markdown and as a self-contained HTML
page: inline CSS and SVG, no scripts, no fonts, no network requests."""
from __future__ import annotations

import fnmatch
import html
import re
from collections.abc import Sequence
from typing import Any

from gpuflow.core import artifacts, tables
from gpuflow.core.artifacts import ArtifactDir
from gpuflow.report import charts
from gpuflow.report import findings as findings_mod
from gpuflow.report.model import GpuFacts, RunSummary, Schedule, StepRow, Summary

ICON = {"success": "✅", "failed": "❌", "skipped": "⏩"}
TEST_ROWS = (("passed", "✅ Passed"), ("failed", "❌ Failed"), ("skipped", "⏩ Skipped"),
             ("errors", "💥 Errors"), ("xfailed", "🔶 XFailed"), ("xpassed", "⚠️ XPassed"))
# what index.html links, when it exists: (label, how to find it)
LINKS = (("Notebook HTML", artifacts.OUTPUT_HTML_GLOB), ("Pytest report", artifacts.PYTEST_HTML),
         ("Pytest output", artifacts.PYTEST_LOG), ("Papermill log", artifacts.PAPERMILL_LOG_GLOB),
         ("nbconvert log", artifacts.NBCONVERT_LOG), ("Coverage", artifacts.COVERAGE_XML),
         ("JUnit XML", artifacts.JUNIT_XML), (artifacts.SUMMARY_JSON, artifacts.SUMMARY_JSON),
         (artifacts.STEP_SUMMARY_MD, artifacts.STEP_SUMMARY_MD))
CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
caption{text-align:left;font-weight:bold;padding:.3em 0}.success{color:#1a7f37}.failed{color:#cf222e}
.skipped{color:#777}svg{border:1px solid #ccc;background:#fafafa}"""


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _one_line(value: Any) -> str:
    return " ".join(str(value).splitlines())


def _md(value: Any) -> str:
    """Markdown text for a value that may come from a notebook, a test or an
    error: one line, no HTML, no table breaks, no links."""
    text = "—" if value is None else _one_line(value)
    text = html.escape(text, quote=False)
    for ch in "\\|[]":
        text = text.replace(ch, "\\" + ch)
    return text


def _code(value: Any) -> str:
    """A Markdown code span: literal inside, so only its own delimiter and line breaks matter."""
    return "`" + _one_line(value).replace("`", "'") + "`"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(_md(v) for v in row) + " |" for row in rows]


def _step_rows(summary: Summary, icons: bool = True) -> list[tuple[Any, ...]]:
    # no emoji in index.html: a headless or minimal system may lack the font
    return [(f"{ICON.get(s.status, '')} {s.shown}" if icons else s.shown, s.name, s.exit_code,
             None if s.duration_s is None else f"{s.duration_s:.1f}s", s.error) for s in summary.steps]


def _fact_rows(summary: Summary) -> list[tuple[str, Any]]:
    nb, gpu = summary.notebook, summary.gpu
    executed = "?" if nb is None or nb.executed_cells is None else nb.executed_cells
    rows: list[tuple[str, Any]] = []
    if nb is not None:
        rows += [("Cells", f"{executed} of {nb.cells} executed" if nb.cells is not None else None),
                 ("Failing cell", None if nb.failed_cell is None else f"cell {nb.failed_cell + 1}"),
                 ("Notebook error", nb.error),
                 ("Notebook duration", f"{nb.duration_s:.1f}s" if nb.duration_s is not None else None)]
    if gpu is None:
        rows.append(("GPU", "none recorded"))
    else:
        rows += [("GPU", gpu.name), *gpu_memory_rows(gpu),
                 ("GPU mean utilisation", f"{gpu.mean_utilization_pct}%"
                  if gpu.mean_utilization_pct is not None else None)]
    return [(k, v) for k, v in rows if v is not None]


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def gpu_memory_rows(gpu: GpuFacts) -> list[tuple[str, Any]]:
    """The two memories, each named for what it is: NVML's device memory in
    use counts an RMM pool's whole reservation; RMM's peak is what the
    notebook allocated."""
    total = f" of {_gib(gpu.memory_total_bytes)}" if gpu.memory_total_bytes else ""
    used = gpu.device_memory_used_peak_bytes
    rmm = gpu.rmm_allocated_peak_bytes
    heaviest = ", ".join(f"In [{c.cell}] {_gib(c.rmm_peak_bytes)}" for c in gpu.heaviest_cells)
    return [("GPU memory in use, peak (NVML; includes an RMM pool's reservation)",
             f"{_gib(used)}{total}" if used is not None else None),
            ("GPU memory allocated by the notebook, peak (RMM)",
             _gib(rmm) if rmm is not None else "not measured (RMM not set up)"),
            ("Heaviest cells (RMM peak)", heaviest or None)]


FINDINGS_HEADER = ("Kind", "Cell", "Text")


def _findings_line(summary: Summary) -> str | None:
    f = summary.findings
    if f is None:
        return None
    return (f"{f.warnings} warning line(s), {f.errors} error output(s), "
            f"{f.stderr_lines} stderr line(s) in the outputs")


def _findings_md(summary: Summary) -> list[str]:
    line = _findings_line(summary)
    if line is None or summary.findings is None:
        return []
    rows = findings_mod.rows(summary.findings)
    return ["### Findings in the outputs", line, "", *(_md_table(FINDINGS_HEADER, rows) if rows else []), ""]


def _findings_html(summary: Summary) -> list[str]:
    line = _findings_line(summary)
    if line is None or summary.findings is None:
        return []
    rows = findings_mod.rows(summary.findings)
    if not rows:  # a table with a header and no rows reads as something missing
        return [f"<p>Findings: {html.escape(line)}.</p>"]
    return [tables.table(rows, header=FINDINGS_HEADER, caption=f"Findings: {line}")]


def markdown(summary: Summary) -> str:
    lines = [f"## {ICON[summary.status]} {_md(summary.title)}: {summary.status.upper()} (exit {summary.exit_code})",
             ""]
    if summary.skip_reason:
        return "\n".join([*lines, f"Skipped: {_md(summary.skip_reason)}", ""])
    lines += _findings_md(summary)
    lines += ["### Steps", *_md_table(("Status", "Step", "Exit", "Duration", "Error"), _step_rows(summary)), ""]
    counts = summary.counts
    if counts is not None:
        lines += ["### Tests", *_md_table(("Metric", "Count"),
                                          [(label, getattr(counts, k)) for k, label in TEST_ROWS]), ""]
        lines += [f"- ❌ {_code(t)}" for t in counts.failing] + ([""] if counts.failing else [])
    else:
        lines += ["### Tests", f"⚠️ No JUnit XML ({artifacts.JUNIT_XML}): the tests did not run or wrote no results.", ""]
    facts = _fact_rows(summary)
    if facts:
        lines += ["### Notebook and GPU", *_md_table(("Fact", "Value"), facts), ""]
    lines += ["### Artifacts", *_md_table(("File", "Size"),
                                          [(a.path, _size(a.bytes)) for a in summary.artifacts]), ""]
    if summary.missing:
        lines += ["### ⚠️ Missing", *[f"- {_code(m)}" for m in summary.missing], ""]
    return "\n".join(lines)


RUN_STEPS = ("execute", "convert", "stage", "test")
RUN_HEADER = ("Status", "Notebook", "Exit", *RUN_STEPS, "Tests", "Reason", "Findings")


def _run_rows(summary: RunSummary) -> list[tuple[str, Summary, list[Any]]]:
    """Per notebook: each step's status and duration, its test counts, and why it failed (one line)."""
    out = []
    for name, s in summary.notebooks:
        by_name = {row.name: row for row in s.steps}
        cells: list[Any] = []
        for step in RUN_STEPS:
            row = by_name.get(step)
            took = "" if row is None or row.duration_s is None or row.status == "skipped" else f" {row.duration_s:.1f}s"
            cells.append(None if row is None else row.shown + took)
        out.append((name, s, [*cells, _tests_cell(s, by_name.get("test")), _reason(s), _findings_cell(s)]))
    return out


def _tests_cell(s: Summary, test: StepRow | None) -> str | None:
    counts = s.counts
    if counts is not None:
        return f"{counts.passed} passed, {counts.failed + counts.errors} failed"
    if s.tests is not None:
        return "unreadable JUnit XML"
    return test.shown if test is not None and test.status == "skipped" else None


def _findings_cell(s: Summary) -> str | None:
    """What the notebook's outputs hold: warnings, errors, stderr lines (none: nothing)."""
    return None if s.findings is None or s.findings.empty else str(s.findings)


def _reason(s: Summary) -> str | None:
    """Why the notebook was skipped, or the first failed step's line, without
    the path it points to (the Files column links it)."""
    if s.skip_reason:
        return s.skip_reason
    if s.status == "success":
        return None
    line = next((row.error for row in s.steps if row.error and row.status == "failed"),
                next((row.error for row in s.steps if row.error), None))
    return re.sub(r" \(see [^()]*\)$", "", line) if line else None


def _run_reason(summary: RunSummary) -> str | None:
    sched = summary.schedule
    return (sched.error or sched.stopped) if sched is not None else None


def run_markdown(summary: RunSummary) -> str:
    lines = [f"## {ICON[summary.status]} {_md(summary.title)}: {summary.status.upper()} (exit {summary.exit_code})",
             ""]
    if summary.skip_reason:
        lines += [f"{_md(summary.skip_reason.capitalize())}: nothing ran, nothing failed.", ""]
    reason = _run_reason(summary)
    if reason:
        lines += [f"**Reason:** {_md(reason)}", ""]
    rows = [(f"{ICON[s.status]} {s.status}", name, s.exit_code, *cells) for name, s, cells in _run_rows(summary)]
    lines += _md_table(RUN_HEADER, rows)
    text = "\n".join(lines + [""] + [f"- ⚠️ {_md(m)}" for m in summary.missing])
    if summary.schedule is None:
        return text
    schedule = [_makespan(summary.schedule), "", *_md_table(SLOT_HEADER, _slot_rows(summary.schedule))]
    if summary.schedule.packed:
        schedule += ["", *_md_table(PACK_HEADER, _pack_rows(summary.schedule))]
    return text.rstrip("\n") + "\n\n" + "\n".join(schedule) + "\n"


PACK_HEADER = ("Packed notebook", "GPU", "Share", "Retried")


def _pack_rows(schedule: Schedule) -> list[tuple[str, str, str, str]]:
    return [(name, p.gpu or "-", "whole GPU" if p.share_bytes is None else _size(p.share_bytes), p.retried or "-")
            for name, p in schedule.packed.items()]


SLOT_HEADER = ("Slot", "Notebooks", "Busy", "GPU utilisation")


def _makespan(schedule: Schedule) -> str:
    return f"Makespan {schedule.makespan_s:.1f}s over {len(schedule.slots)} slot(s)."


def _slot_rows(schedule: Schedule) -> list[tuple[str, str, str, str]]:
    return [(name, ", ".join(slot.notebooks) or "-", f"{slot.busy_fraction:.0%}",
             "-" if slot.gpu_utilisation_mean is None else f"{slot.gpu_utilisation_mean:.0f}%")
            for name, slot in schedule.slots.items()]




def _document(title: str, body: Sequence[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")


def _links(artifact_dir: ArtifactDir) -> str:
    items = []
    for label, pattern in LINKS:
        # a pattern that matches nothing is listed as missing, like a plain name
        found = (sorted(artifact_dir.path.glob(pattern)) if "*" in pattern else []) or [artifact_dir.path / pattern]
        for path in found:
            if path.is_file():  # index.html is written last: summary.json is there
                items.append(f'<li><a href="{tables.href(path.name)}">{html.escape(label)}</a></li>')
            else:
                items.append(f"<li>{html.escape(label)}: <em>missing</em></li>")
    return "<h2>Files</h2><ul>" + "".join(items) + "</ul>"


def page(summary: Summary, artifact_dir: ArtifactDir) -> str:
    body = [f'<h1 class="{summary.status}">{html.escape(str(summary))}</h1>', *_findings_html(summary),
            tables.table(_step_rows(summary, icons=False), header=("Status", "Step", "Exit", "Duration", "Error"),
                         caption="Steps")]
    counts = summary.counts
    if counts is not None:
        body.append(tables.table([(label.split(" ", 1)[1], getattr(counts, k)) for k, label in TEST_ROWS],
                                 header=("Metric", "Count"), caption="Tests"))
        body += [f"<p>Failing: <code>{html.escape(t)}</code></p>" for t in counts.failing]
    body.append(tables.table(_fact_rows(summary), header=("Fact", "Value"), caption="Notebook and GPU"))
    if summary.gpu and summary.gpu.memory_series:
        body.append(charts.gpu_chart(summary.gpu))
    body.append(_links(artifact_dir))
    body.append(tables.table([(a.path, _size(a.bytes), a.sha256[:12]) for a in summary.artifacts],
                             header=("File", "Size", "sha256"), caption="Artifacts"))
    if summary.missing:
        body.append("<h2>Missing</h2><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in summary.missing)
                    + "</ul>")
    return _document(summary.title, body)


# what the run page links for each notebook, when its summary lists the file
RUN_LINKS = (("notebook", artifacts.OUTPUT_HTML_GLOB), ("pytest report", artifacts.PYTEST_HTML),
             ("papermill log", artifacts.PAPERMILL_LOG), ("pytest log", artifacts.PYTEST_LOG),
             ("nbconvert log", artifacts.NBCONVERT_LOG), ("details", artifacts.INDEX_HTML))


def _href(*parts: str) -> str:
    # relative links only: the run dir is uploaded and opened from anywhere
    return html.escape(tables.href(*parts), quote=True)


def _run_links(name: str, s: Summary) -> str:
    have = sorted({a.path for a in s.artifacts} | {artifacts.INDEX_HTML})
    links = [f'<a href="{_href(name, *path.split("/"))}">{html.escape(label)}</a>'
             for label, pattern in RUN_LINKS for path in have if fnmatch.fnmatch(path, pattern)]
    return " · ".join(links)


def run_page(summary: RunSummary) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in (*RUN_HEADER, "Files"))
    rows = []
    for name, s, cells in _run_rows(summary):
        rows.append(f'<tr><td class="{html.escape(s.status)}">{html.escape(s.status)}</td>'
                    f'<td><a href="{_href(name, artifacts.INDEX_HTML)}">{html.escape(name)}</a></td>'
                    f"<td>{tables.cell(s.exit_code)}</td>" + "".join(f"<td>{tables.cell(v)}</td>" for v in cells)
                    + f"<td>{_run_links(name, s)}</td></tr>")
    body = [f'<h1 class="{html.escape(summary.status)}">{html.escape(str(summary))}</h1>']
    if summary.skip_reason:
        body.append(f"<p>{html.escape(summary.skip_reason.capitalize())}: nothing ran, nothing failed.</p>")
    reason = _run_reason(summary)
    if reason:
        body.append(f"<p><strong>Reason:</strong> {html.escape(reason)}</p>")
    body.append(f"<table><caption>Notebooks</caption><tr>{head}</tr>{''.join(rows)}</table>")
    if summary.missing:
        body.append("<ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in summary.missing) + "</ul>")
    if summary.schedule is not None:
        body.append(tables.table(_slot_rows(summary.schedule), header=SLOT_HEADER,
                                 caption=f"Schedule: {_makespan(summary.schedule)}"))
        if summary.schedule.packed:
            body.append(tables.table(_pack_rows(summary.schedule), header=PACK_HEADER, caption="Packing"))
        body.append(charts.timeline(summary))
    return _document(summary.title, body)
