"""Timing, alternation, result lines, the table and the JSON file.

Benchmarks are not the product: this package may import `subprocess`
directly (the one-helper rule is for `gpuflow/`)."""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent



def _script_dir() -> Path:
    # the baseline CLIs (papermill, jupyter) live beside the interpreter in a
    # venv; with `pip install --target` (the GPU machine) they are on PATH
    here = Path(sys.executable).parent
    if (here / "papermill").exists():
        return here
    found = shutil.which("papermill")
    return Path(found).parent if found else here


VENV_BIN = _script_dir()


class BenchFailure(Exception):
    """A side of a comparison did not complete (non-zero exit)."""


@dataclass(frozen=True, kw_only=True)
class Config:
    quick: bool
    out: Path  # bench-out/: cached inputs, scratch dirs, logs, results.json

    @property
    def scratch(self) -> Path:
        return self.out / "scratch"

    @property
    def logs(self) -> Path:
        return self.out / "logs"


@dataclass(frozen=True, kw_only=True)
class Side:
    """One side of a comparison: a command and what to do before each run
    (outside the timed region), e.g. delete the previous run's output."""

    name: str
    cmd: Sequence[str]
    cwd: Path | None = None
    prepare: Callable[[], None] | None = None
    env: Mapping[str, str] | None = None

    def shell(self) -> str:
        return " ".join(_quote(a) for a in self.cmd)


@dataclass(kw_only=True)
class Line:
    """One row (or sub-case of a row) of the table."""

    row: str
    case: str
    gpuflow: float | None = None  # median seconds, or a value in `unit`
    baseline: float | None = None
    unit: str = "s"
    runs: int = 0
    target: str = "report"
    met: bool | None = None
    note: str = ""
    commands: dict[str, str] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.gpuflow is None or self.baseline in (None, 0.0):
            return None
        return self.gpuflow / self.baseline  # type: ignore[operator]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every measured command gets: this checkout importable,
    the venv's `papermill`/`jupyter`/`pytest` first on PATH, no CI folds."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(VENV_BIN), env.get("PATH", "")))
    env.pop("GITHUB_ACTIONS", None)
    env.pop("GITHUB_STEP_SUMMARY", None)
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    env.update(extra or {})
    return env


def gpuflow_cmd(step: str, *args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", f"gpuflow.{step}", *map(str, args)]


def module_missing(name: str) -> bool:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:
        return True


def timed(side: Side, log_dir: Path) -> tuple[float, float]:
    """Run the side once; return (wall seconds, CPU seconds) of the command
    alone. CPU time (user + sys of the child and the descendants it waited
    for, kernels included) barely moves when other work shares the machine."""
    if side.prepare is not None:
        side.prepare()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{_slug(side.name)}.log"
    with open(log_path, "wb") as log:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        rc = subprocess.call(list(side.cmd), cwd=side.cwd, env=dict(side.env or child_env()),
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise BenchFailure(f"{side.name} exited {rc}: {tail[0][:160]} (log: {log_path})")
    return elapsed, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def alternate(a: Side, b: Side | None, *, runs: int, warmup: int, log_dir: Path
              ) -> dict[str, list[tuple[float, float]]]:
    """A B A B ...: drift on a shared machine hits both sides alike.
    Warm-up runs (page cache, .pyc files, kernel spec lookups) are discarded.
    Returns (wall, cpu) samples per side name."""
    sides = [s for s in (a, b) if s is not None]
    samples: dict[str, list[tuple[float, float]]] = {s.name: [] for s in sides}
    for i in range(warmup + runs):
        for side in sides:
            sample = timed(side, log_dir)
            if i >= warmup:
                samples[side.name].append(sample)
    return samples


def compare(row: str, case: str, a: Side, b: Side | None, *, cfg: Config, runs: int,
            warmup: int = 1, target: str = "report", limit: float | None = None,
            note: str = "") -> Line:
    """Measure a pair and judge `ratio <= limit` (or `gpuflow <= limit` when
    there is no baseline side)."""
    line = Line(row=row, case=case, target=target, note=note,
                commands={"gpuflow": a.shell(), **({"baseline": b.shell()} if b else {})})
    try:
        samples = alternate(a, b, runs=runs, warmup=warmup, log_dir=cfg.logs / f"row{row}")
    except BenchFailure as exc:
        line.note = _join(line.note, f"failed: {exc}")
        return line
    wall = {k: [w for w, _ in v] for k, v in samples.items()}
    cpu = {k: [c for _, c in v] for k, v in samples.items()}
    line.gpuflow = statistics.median(wall[a.name])
    line.runs = len(wall[a.name])
    line.samples = {"gpuflow": wall[a.name], "gpuflow_cpu": cpu[a.name]}
    cpu_note = f"CPU {statistics.median(cpu[a.name]):.2f} s"
    if b is not None:
        line.baseline = statistics.median(wall[b.name])
        line.samples.update(baseline=wall[b.name], baseline_cpu=cpu[b.name])
        cpu_b = statistics.median(cpu[b.name])
        cpu_note += f" vs {cpu_b:.2f} s" + (f" (CPU ratio {statistics.median(cpu[a.name]) / cpu_b:.2f})" if cpu_b else "")
    line.note = _join(line.note, cpu_note)
    if limit is not None:
        value = line.ratio if b is not None else line.gpuflow
        line.met = value is not None and value <= limit
    return line


def missing_line(row: str, case: str, module: str, target: str, baseline: Side | None = None, *,
                 cfg: Config | None = None, runs: int = 1, warmup: int = 0) -> Line:
    """The gpuflow side is not there yet: say so, and still measure the
    baseline (when given a config) so the table shows what is to beat."""
    note = f"n/a (module missing: {module})"
    if baseline is None or cfg is None:
        return Line(row=row, case=case, target=target, note=note,
                    commands={"baseline": baseline.shell()} if baseline else {})
    line = compare(row, case, baseline, None, cfg=cfg, runs=runs, warmup=warmup, target=target)
    line.baseline, line.gpuflow = line.gpuflow, None
    line.samples = {k.replace("gpuflow", "baseline"): v for k, v in line.samples.items()}
    line.commands = {"baseline": line.commands.get("gpuflow", "")}
    line.note = _join(note, line.note)
    return line


def measure(row: str, case: str, module: str, gpuflow: Side, baseline: Side | None, *, cfg: Config,
            runs: int, warmup: int, target: str = "report", limit: float | None = None) -> Line:
    """`compare`, or the baseline alone when `module` is not written yet."""
    if module_missing(module):
        return missing_line(row, case, module, target, baseline, cfg=cfg, runs=runs, warmup=warmup)
    return compare(row, case, gpuflow, baseline, cfg=cfg, runs=runs, warmup=warmup, target=target, limit=limit)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    facts: dict[str, Any] = {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
                             "platform": platform.platform(), "gpu": None}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            facts["gpu"] = ", ".join(out.stdout.split("\n")).strip(", ") or None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return facts


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.3g} {unit}"


def table(lines: Sequence[Line]) -> str:
    head = ("#", "case", "gpuflow", "baseline", "ratio", "runs", "target", "met")
    rows = [head] + [
        (ln.row, ln.case, fmt(ln.gpuflow, ln.unit), fmt(ln.baseline, ln.unit),
         "n/a" if ln.ratio is None else f"{ln.ratio:.2f}", str(ln.runs), ln.target,
         {True: "yes", False: "NO", None: "-"}[ln.met])
        for ln in lines
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  [{ln.row} {ln.case}] {ln.note}" for ln in lines if ln.note]
    return "\n".join(out + (["", "notes:"] + notes if notes else []))


def markdown(lines: Sequence[Line]) -> str:
    """The table for docs/benchmarks.md, with notes and commands in full."""
    out = ["| # | case | gpuflow | baseline | ratio | runs | target | met | notes |",
           "|---|---|---|---|---|---|---|---|---|"]
    for ln in lines:
        ratio = "n/a" if ln.ratio is None else f"{ln.ratio:.2f}"
        met = {True: "yes", False: "**NO**", None: "-"}[ln.met]
        note = ln.note.replace("|", "\\|")
        out.append(f"| {ln.row} | {ln.case} | {fmt(ln.gpuflow, ln.unit)} | {fmt(ln.baseline, ln.unit)} | {ratio} "
                   f"| {ln.runs} | {ln.target} | {met} | {note} |")
    return "\n".join(out)


def write_json(path: Path, lines: Sequence[Line], *, quick: bool, extra: Sequence[dict[str, Any]] = ()
               ) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine(), "quick": quick,
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "lines": [ln.to_json() for ln in lines] + list(extra)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def load_lines(path: Path) -> list[Line]:
    """Lines from a results JSON written elsewhere (e.g. the GPU machine)."""
    doc = json.loads(path.read_text())
    known = set(Line.__dataclass_fields__)
    lines = []
    for item in doc.get("lines", []):
        line = Line(**{k: v for k, v in item.items() if k in known})
        gpu = (doc.get("machine") or {}).get("gpu")
        line.note = _join(line.note, f"from {path.name}" + (f" ({gpu})" if gpu else ""))
        lines.append(line)
    return lines


def _join(a: str, b: str) -> str:
    return "; ".join(x for x in (a, b) if x)


def _quote(arg: str | os.PathLike[str]) -> str:
    import shlex
    text = str(arg)
    if text == sys.executable:
        return "python"
    return shlex.quote(text)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")
