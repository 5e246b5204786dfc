"""What a `gpuflow run` reports: the status table, the schedule (makespan,
slots, GPU utilisation), and run.json; the run-level summary, schedule
included, is gpuflow.summary's."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gpuflow.core import cli, errors, record, tables
from gpuflow.core.artifacts import RunDir
from gpuflow.core.fsutil import atomic_write_text
from gpuflow.core.log import log
from gpuflow.flow import config as cfgmod
from gpuflow.flow.notebook import NotebookResult
from gpuflow.flow.schedule import Slot
from gpuflow.report.model import Packed, Schedule, SlotUse, Summary


@dataclass(frozen=True, kw_only=True)
class RunResult:
    run_dir: Path
    exit_code: int
    notebooks: list[NotebookResult]
    makespan_s: float
    slots: dict[str, SlotUse]
    index_html: Path | None
    stopped: errors.Stopped | None = None
    error: str | None = None  # a run-level step that failed before any notebook ran
    packed: dict[str, Packed] = field(default_factory=dict)

    def __str__(self) -> str:
        bad = [n for n in self.notebooks if n.exit_code != 0]
        skipped = [n for n in self.notebooks if n.skip_reason is not None]
        if skipped and len(skipped) == len(self.notebooks) and not bad:
            return f"every notebook was skipped ({len(skipped)}): nothing ran, nothing failed"
        ran = len(self.notebooks) - len(skipped)
        also = f"; {len(skipped)} skipped" if skipped else ""
        return f"{ran - len(bad)} of {ran} notebooks passed{also}"

    def _repr_html_(self) -> str:
        rows = [(n.name, n.exit_code, ", ".join(f"{k}: {v}" for k, v in n.steps.items()), n.error)
                for n in self.notebooks]
        return tables.table(rows, header=("notebook", "exit", "steps", "error"),
                            caption=f"{self}; exit {self.exit_code}; {self.run_dir}")


def slot_report(slots: list[Slot], pool: Any, makespan: float, results: list[NotebookResult],
                run_dir: Path) -> dict[str, SlotUse]:
    report: dict[str, SlotUse] = {}
    for slot in slots:
        busy = pool.busy_s.get(slot.name, 0.0) if pool is not None else 0.0
        mine = [r for r in results if slot.name in r.slot.split("+")]
        report[slot.name] = SlotUse(
            gpu=slot.gpu, notebooks=[r.name for r in mine], busy_s=round(busy, 3),
            busy_fraction=round(busy / makespan, 3) if makespan > 0 else 0.0,
            gpu_utilisation_mean=_telemetry_mean([RunDir(run_dir).notebook(r.name).telemetry for r in mine]),
        )
    return report


def _telemetry_mean(paths: list[Path]) -> float | None:
    from gpuflow.summary import gpu_facts

    values = [facts.mean_utilization_pct for facts in map(gpu_facts, paths)
              if facts is not None and facts.mean_utilization_pct is not None]
    return round(sum(values) / len(values), 1) if values else None


def schedule(result: RunResult, cfg: cfgmod.FlowConfig) -> Schedule:
    return Schedule(run_id=result.run_dir.name, exit_code=result.exit_code, profile=cfg.profile,
                    makespan_s=result.makespan_s, slots=result.slots,
                    stopped=str(result.stopped) if result.stopped else None, error=result.error,
                    packed=result.packed)


def finish_run(result: RunResult, cfg: cfgmod.FlowConfig) -> RunResult:
    """The run-level summary of gpuflow.summary, with the schedule (makespan,
    slots) in it, then run.json: the schedule and every notebook's result."""
    from gpuflow import summary

    run = RunDir(result.run_dir)
    # one call writes every notebook's summary too: each notebook's summary is
    # appended to $GITHUB_STEP_SUMMARY exactly once
    try:
        written = summary.write_run_summary(run.path, title=f"gpuflow run {run.path.name} ({cfg.profile})",
                                            schedule=schedule(result, cfg), fail_on_warnings=cfg.fail_on_warnings)
        result = replace(_with_summary(result, "success", 0), index_html=run.index_html)
        if cfg.fail_on_warnings:
            result = _warnings_fail(result, dict(written.notebooks))
    except Exception as exc:  # the run's own outcome stands; the summary's failure is added to it
        failed = errors.failure(exc)
        if failed.traceback:
            log.error(failed.traceback)
        log.error(cli.fail_line("gpuflow.summary", failed))
        result = _with_summary(result, "failed", failed.code)
    data = {**asdict(schedule(result, cfg)), "notebooks": [asdict(n) for n in result.notebooks]}
    atomic_write_text(run.run_json, json.dumps(data, indent=2, default=str))
    return result


def _warnings_fail(result: RunResult, parts: dict[str, Summary]) -> RunResult:
    """--fail-on-warnings: a notebook whose outputs hold Python warnings fails (exit 1)."""
    code = errors.StepFailed.exit_code
    notebooks = []
    for n in result.notebooks:
        found = parts[n.name].findings if n.name in parts else None
        if found is not None and found.warnings and n.exit_code == 0:
            n = replace(n, exit_code=code, failed_step="findings",
                        error=f"{found.warnings} Python warning(s) in its outputs (--fail-on-warnings)")
        notebooks.append(n)
    return replace(result, notebooks=notebooks, exit_code=errors.worst([n.exit_code for n in notebooks]
                                                                      + [result.exit_code]))


def _with_summary(result: RunResult, status: record.Status, code: int) -> RunResult:
    notebooks = [replace(n, steps={**n.steps, "summary": status}, codes={**n.codes, "summary": code},
                         exit_code=errors.worst([n.exit_code, code])) for n in result.notebooks]
    return replace(result, notebooks=notebooks, exit_code=errors.worst([result.exit_code, code]))


# the terminal's status table is narrow: one short word per status
SHORT: dict[record.Status, str] = {"success": "ok", "failed": "failed", "skipped": "skipped", "kept": "kept"}


def _status_word(n: NotebookResult, step: str) -> str:
    if step not in n.steps:
        return "-"
    note = n.notes.get(step)
    return f"{SHORT[n.steps[step]]} ({note})" if note else SHORT[n.steps[step]]


def status_table(result: RunResult) -> str:
    steps = ("execute", "convert", "stage", "test", "summary")
    rows = [["notebook", *steps, "exit", "time", "note"]]
    for n in result.notebooks:
        note = f"retried: {n.retried}" if n.retried else ""  # a skip's reason is in its step's word
        rows.append([n.name, *(_status_word(n, s) for s in steps), str(n.exit_code), f"{n.duration_s:.1f}s", note])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() for row in rows]
    lines.append(f"{result}; makespan {result.makespan_s:.1f}s; exit {result.exit_code}")
    return "\n".join(lines)
