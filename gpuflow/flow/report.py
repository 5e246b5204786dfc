"""What a `gpuflow run` reports: the status table, the schedule (makespan,
slots, GPU utilisation) in run.json, and the run-level summary."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gpuflow.core import cli, errors
from gpuflow.core.artifacts import RunDir
from gpuflow.core.fsutil import atomic_write_text
from gpuflow.core.log import log
from gpuflow.flow import config as cfgmod
from gpuflow.flow.notebook import NotebookResult
from gpuflow.flow.schedule import Slot


@dataclass(frozen=True, kw_only=True)
class RunResult:
    run_dir: Path
    exit_code: int
    notebooks: list[NotebookResult]
    makespan_s: float
    slots: dict[str, dict[str, Any]]
    index_html: Path | None
    stopped: errors.Stopped | None = None
    error: str | None = None  # a run-level step that failed before any notebook ran

    def __str__(self) -> str:
        bad = [n for n in self.notebooks if n.exit_code != 0]
        return f"{len(self.notebooks) - len(bad)} of {len(self.notebooks)} notebooks passed"


def slot_report(slots: list[Slot], pool: Any, makespan: float, results: list[NotebookResult],
                 run_dir: Path) -> dict[str, dict[str, Any]]:
    report: dict[str, dict[str, Any]] = {}
    for slot in slots:
        busy = pool.busy_s.get(slot.name, 0.0) if pool is not None else 0.0
        mine = [r for r in results if r.slot == slot.name]
        report[slot.name] = {
            "gpu": slot.gpu, "notebooks": [r.name for r in mine], "busy_s": round(busy, 3),
            "busy_fraction": round(busy / makespan, 3) if makespan > 0 else 0.0,
            "gpu_utilisation_mean": _telemetry_mean([RunDir(run_dir).notebook(r.name).telemetry for r in mine]),
        }
    return report


def _telemetry_mean(paths: list[Path]) -> float | None:
    from gpuflow.summary import gpu_facts

    values: list[float] = []
    for path in paths:
        mean = (gpu_facts(path) or {}).get("mean_utilization_pct")
        if isinstance(mean, (int, float)):
            values.append(float(mean))
    return round(sum(values) / len(values), 1) if values else None


def finish_run(result: RunResult, cfg: cfgmod.FlowConfig) -> RunResult:
    """The run-level summary of gpuflow.summary, then run.json (the schedule:
    makespan, slots), which is also added to the summary's JSON and Markdown."""
    from gpuflow import summary

    run_dir, run = result.run_dir, RunDir(result.run_dir)
    # one call writes every notebook's summary too: each notebook's summary is
    # appended to $GITHUB_STEP_SUMMARY exactly once
    try:
        summary.write_run_summary(run_dir, title=f"gpuflow run {run_dir.name} ({cfg.profile})")
        result = _with_summary(result, "ok", 0)
    except (errors.GpuflowError, OSError) as exc:
        log.error(cli.fail_line("gpuflow.summary", exc))
        result = _with_summary(result, "failed", exc.exit_code if isinstance(exc, errors.GpuflowError)
                               else errors.INTERNAL)
    schedule = {
        "run_id": run_dir.name, "exit_code": result.exit_code, "profile": cfg.profile,
        "makespan_s": result.makespan_s, "slots": result.slots,
        "stopped": str(result.stopped) if result.stopped else None, "error": result.error,
    }
    data = {**schedule, "notebooks": [dict(n.__dict__) for n in result.notebooks]}
    atomic_write_text(run.run_json, json.dumps(data, indent=2, default=str))
    index = run.index_html
    if not index.is_file():
        return result
    data = json.loads(run.summary_json.read_text(encoding="utf-8"))
    atomic_write_text(run.summary_json, json.dumps({**data, "run": schedule}, indent=2, default=str))
    markdown = run.step_summary.read_text(encoding="utf-8")
    atomic_write_text(run.step_summary, markdown.rstrip("\n") + "\n\n" + schedule_markdown(result))
    return replace(result, index_html=index)


def _with_summary(result: RunResult, status: str, code: int) -> RunResult:
    notebooks = [replace(n, steps={**n.steps, "summary": status}, codes={**n.codes, "summary": code},
                         exit_code=errors.worst([n.exit_code, code])) for n in result.notebooks]
    return replace(result, notebooks=notebooks, exit_code=errors.worst([result.exit_code, code]))


def schedule_markdown(result: RunResult) -> str:
    lines = [f"Makespan {result.makespan_s:.1f}s over {len(result.slots)} slot(s).", "",
             "| Slot | Notebooks | Busy | GPU utilisation |", "|---|---|---|---|"]
    for name, slot in result.slots.items():
        util = slot["gpu_utilisation_mean"]
        lines.append(f"| {name} | {', '.join(slot['notebooks']) or '-'} | {slot['busy_fraction']:.0%} | "
                     f"{'-' if util is None else f'{util:.0f}%'} |")
    return "\n".join(lines) + "\n"


def status_table(result: RunResult) -> str:
    steps = ("execute", "convert", "stage", "test", "summary")
    rows = [["notebook", *steps, "exit", "time"]]
    for n in result.notebooks:
        rows.append([n.name, *(n.steps.get(s, "-") for s in steps), str(n.exit_code), f"{n.duration_s:.1f}s"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() for row in rows]
    lines.append(f"{result}; makespan {result.makespan_s:.1f}s; exit {result.exit_code}")
    return "\n".join(lines)
