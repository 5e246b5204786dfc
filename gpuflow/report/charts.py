"""The report's charts: inline SVG that needs no script, no font and nothing
from the network, so index.html reads the same from an artifact store, a
mail attachment or a disk.

- `gpu_chart`: one notebook's GPU over time: the device memory in use
  (NVML, which counts an RMM pool's whole reservation), what the notebook
  allocated through RMM (each cell's peak, drawn over that cell's span), the
  utilisation on its own 0-100 % axis, and the cell boundaries, labelled
  `In [n]`, so a reader can see which cell took the memory.
- `timeline`: a run: one row per slot, one bar per notebook split into its
  execute, convert and test steps, and the makespan.
"""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gpuflow.report.model import GpuFacts, RunSummary

GIB = float(1 << 30)
MIB_PER_GIB = 1024.0
COLOURS = {"used": "#0969da", "rmm": "#1a7f37", "util": "#bc4c00", "execute": "#0969da",
           "convert": "#8250df", "stage": "#9a6700", "test": "#1a7f37", "grid": "#d0d7de", "text": "#24292f"}
FONT = 'font-family="system-ui,sans-serif" font-size="11"'


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < top * (1 - 1e-9):
        ticks.append(round(ticks[-1] + step, 6))
    return ticks


def _fmt(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.1f}"


@dataclass(frozen=True)
class _Frame:
    """The plot area inside the SVG and the data ranges it shows."""

    left: float
    top: float
    width: float
    height: float
    x_max: float
    y_max: float

    def x(self, t: float) -> float:
        return self.left + t / (self.x_max or 1) * self.width

    def y(self, v: float, top: float | None = None) -> float:
        return self.top + self.height - v / ((top if top is not None else self.y_max) or 1) * self.height


def _x_axis(f: _Frame, label: str) -> list[str]:
    out = [f'<line x1="{f.left}" y1="{f.top + f.height}" x2="{f.left + f.width}" y2="{f.top + f.height}" '
           f'stroke="{COLOURS["text"]}"/>']
    for t in _ticks(f.x_max):
        if t > f.x_max * 1.001:
            break
        x = f.x(t)
        out.append(f'<line x1="{x:.1f}" y1="{f.top + f.height}" x2="{x:.1f}" y2="{f.top + f.height + 4}" '
                   f'stroke="{COLOURS["text"]}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{f.top + f.height + 16}" text-anchor="middle" {FONT}>'
                   f"{_fmt(t)}</text>")
    out.append(f'<text class="axis-label" x="{f.left + f.width / 2}" y="{f.top + f.height + 32}" '
               f'text-anchor="middle" {FONT}>{_e(label)}</text>')
    return out


def _y_axis(f: _Frame, top: float, label: str, right: bool = False) -> list[str]:
    x0 = f.left + f.width if right else f.left
    sign = 1 if right else -1
    out = [f'<line x1="{x0}" y1="{f.top}" x2="{x0}" y2="{f.top + f.height}" stroke="{COLOURS["text"]}"/>']
    for v in _ticks(top, 4):
        if v > top * 1.001:
            break
        y = f.y(v, top)
        if not right:
            out.append(f'<line x1="{f.left}" y1="{y:.1f}" x2="{f.left + f.width}" y2="{y:.1f}" '
                       f'stroke="{COLOURS["grid"]}" stroke-width="0.5"/>')
        out.append(f'<text class="tick" x="{x0 + sign * 6}" y="{y + 4:.1f}" '
                   f'text-anchor="{"start" if right else "end"}" {FONT}>{_fmt(v)}</text>')
    lx = x0 + sign * 40
    out.append(f'<text class="axis-label" x="{lx}" y="{f.top + f.height / 2}" text-anchor="middle" {FONT} '
               f'transform="rotate({90 if right else -90} {lx} {f.top + f.height / 2})">{_e(label)}</text>')
    return out


def _legend(items: Sequence[tuple[str, str, str]], x: float, y: float) -> list[str]:
    out = []
    for key, colour, text in items:
        out.append(f'<g class="legend" data-series="{key}"><rect x="{x}" y="{y - 9}" width="12" height="10" '
                   f'fill="{colour}"/><text x="{x + 16}" y="{y}" {FONT}>{_e(text)}</text></g>')
        x += 28 + 6.2 * len(text)
    return out


def gpu_chart(gpu: GpuFacts, width: int = 760, height: int = 300) -> str:
    """One notebook's GPU memory and utilisation over time, as inline SVG;
    empty when there are fewer than two samples."""
    if len(gpu.memory_series) < 2:
        return ""
    spans = gpu.cell_spans
    x_max = max([t for t, _ in gpu.memory_series] + [end for _, _, end in spans])
    peaks = dict(gpu.cell_peaks)
    used_gib = [(t, mib / MIB_PER_GIB) for t, mib in gpu.memory_series]
    y_top = max([v for _, v in used_gib] + [b / GIB for b in peaks.values()] + [0.001])
    y_max = _ticks(y_top, 4)[-1]
    f = _Frame(left=64, top=40, width=width - 128, height=height - 96, x_max=x_max, y_max=y_max)
    title = f"GPU memory and utilisation over time{f' on {gpu.name}' if gpu.name else ''}"
    out = [f'<svg class="gpu-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>']
    out += _y_axis(f, y_max, "memory (GiB)") + _y_axis(f, 100, "utilisation (%)", right=True)
    out += _x_axis(f, "time since the kernel started (s)")
    last_label = -1e9
    for cell, start, end in spans:
        x = f.x(start)
        out.append(f'<line class="cell-boundary" data-cell="{cell}" x1="{x:.1f}" y1="{f.top}" x2="{x:.1f}" '
                   f'y2="{f.top + f.height}" stroke="#8c959f" stroke-dasharray="3,3"><title>In [{cell}] '
                   f"{start:.2f}-{end:.2f} s</title></line>")
        if x - last_label >= 34:  # labels that would overlap are left to the line's tooltip
            out.append(f'<text class="cell-label" x="{x + 2:.1f}" y="{f.top - 4}" {FONT}>In [{cell}]</text>')
            last_label = x
    points = " ".join(f"{f.x(t):.1f},{f.y(v):.1f}" for t, v in used_gib)
    out.append(f'<polyline class="memory-used" fill="none" stroke="{COLOURS["used"]}" stroke-width="2" '
               f'points="{points}"><title>GPU memory in use (NVML)</title></polyline>')
    for cell, start, end in spans:
        if cell in peaks:
            y = f.y(peaks[cell] / GIB)
            out.append(f'<line class="rmm-allocated" data-cell="{cell}" x1="{f.x(start):.1f}" y1="{y:.1f}" '
                       f'x2="{max(f.x(end), f.x(start) + 2):.1f}" y2="{y:.1f}" stroke="{COLOURS["rmm"]}" '
                       f'stroke-width="4"><title>In [{cell}]: RMM peak {peaks[cell] / GIB:.2f} GiB</title></line>')
    if gpu.utilization_series:
        points = " ".join(f"{f.x(t):.1f},{f.y(v, 100):.1f}" for t, v in gpu.utilization_series)
        out.append(f'<polyline class="utilisation" fill="none" stroke="{COLOURS["util"]}" stroke-width="1.5" '
                   f'stroke-dasharray="5,3" points="{points}"><title>GPU utilisation (%)</title></polyline>')
    out += _legend([("memory-used", COLOURS["used"], "memory in use (NVML, includes an RMM pool)"),
                    ("rmm-allocated", COLOURS["rmm"], "allocated by the notebook (RMM peak per cell)"),
                    ("utilisation", COLOURS["util"], "utilisation (%)")], f.left, height - 8)
    return "".join(out) + "</svg>"


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


TIMELINE_STEPS = ("execute", "convert", "stage", "test")


def timeline(summary: RunSummary, width: int = 760) -> str:
    """The run as one row per slot and one bar per notebook, split into its
    steps, with the makespan; empty without a schedule or step times."""
    schedule = summary.schedule
    if schedule is None or not schedule.slots:
        return ""
    steps = {name: [(s.name, _epoch(s.started_at), s.duration_s or 0.0) for s in nb.steps
                    if s.name in TIMELINE_STEPS and _epoch(s.started_at) is not None]
             for name, nb in summary.notebooks}
    starts = [t for rows in steps.values() for _, t, _ in rows if t is not None]
    if not starts:
        return ""
    t0 = min(starts)
    ends = [t - t0 + d for rows in steps.values() for _, t, d in rows if t is not None]
    x_max = max(ends + [schedule.makespan_s])
    row_h, slots = 34, list(schedule.slots.items())
    height = 70 + row_h * len(slots) + 30
    f = _Frame(left=90, top=30, width=width - 130, height=row_h * len(slots), x_max=x_max, y_max=1)
    title = f"Run timeline: {len(summary.notebooks)} notebook(s) on {len(slots)} slot(s), makespan {schedule.makespan_s:.1f} s"
    out = [f'<svg class="run-timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>']
    out += _x_axis(f, "time since the first notebook started (s)")
    for i, (slot, use) in enumerate(slots):
        y = f.top + i * row_h
        out.append(f'<text class="slot-label" x="{f.left - 8}" y="{y + row_h / 2 + 4}" text-anchor="end" {FONT}>'
                   f"{_e(slot)}</text>")
        for name in use.notebooks:
            for step, start, dur in steps.get(name, []):
                if start is None:
                    continue
                x0, x1 = f.x(start - t0), f.x(start - t0 + dur)
                out.append(f'<rect class="step {step}" data-notebook="{_e(name)}" x="{x0:.1f}" y="{y + 5}" '
                           f'width="{max(x1 - x0, 1):.1f}" height="{row_h - 10}" fill="{COLOURS[step]}">'
                           f"<title>{_e(name)}: {step} {dur:.1f} s</title></rect>")
            first = min((s for _, s, _ in steps.get(name, []) if s is not None), default=None)
            if first is not None:
                out.append(f'<text class="notebook-label" x="{f.x(first - t0) + 3:.1f}" y="{y + row_h / 2 + 4}" '
                           f'fill="#fff" {FONT}>{_e(name)}</text>')
    xm = f.x(schedule.makespan_s)
    out.append(f'<line class="makespan" x1="{xm:.1f}" y1="{f.top - 6}" x2="{xm:.1f}" y2="{f.top + f.height}" '
               f'stroke="{COLOURS["text"]}" stroke-width="1.5"/>'
               f'<text class="makespan-label" x="{xm - 2:.1f}" y="{f.top - 10}" text-anchor="end" {FONT}>'
               f"makespan {schedule.makespan_s:.1f} s</text>")
    out += _legend([(s, COLOURS[s], s) for s in TIMELINE_STEPS], f.left, height - 8)
    return "".join(out) + "</svg>"
