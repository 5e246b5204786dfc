"""One notebook's way through `gpuflow run`: execute -> convert -> stage ->
test, calling the same step functions as the step CLIs.

Execute runs as its own `python -m gpuflow.execute` process: one kernel per
process keeps parallel notebooks clear of the ZMQ-context and port races that
threads sharing one process hit (papermill #239, #511).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuflow.core import artifacts, errors, proc, record
from gpuflow.core.artifacts import ArtifactDir, RunDir
from gpuflow.core.cli import fail_line
from gpuflow.core.fsutil import atomic_write_text
from gpuflow.core.log import log
from gpuflow.flow import config as cfgmod
from gpuflow.flow.resume import StepCache, digest, stamped
from gpuflow.flow.schedule import Slot

KERNEL_START_TRIES = 2  # execute retries once in-process; this one is a fresh process, fresh ports


@dataclass(frozen=True, kw_only=True)
class NotebookJob:
    notebook: Path  # inside the notebook repo
    rel: str  # as the config named it, relative to the repo
    stem: str
    name: str  # stem, plus _lite in the lite profile: the artifact dir and file prefix
    dir: Path

    @property
    def output(self) -> Path:
        return ArtifactDir(self.dir).output_notebook(self.name)

    @property
    def html(self) -> Path:
        return ArtifactDir(self.dir).output_html(self.name)


@dataclass(frozen=True, kw_only=True)
class TestBase:
    repo: Path
    python: str


@dataclass(kw_only=True)
class Flow:
    """What every notebook of one run shares."""

    config: cfgmod.FlowConfig
    run_dir: Path
    resume: bool
    repo: Path
    test_base: Future[TestBase] | None
    background: Executor  # fetches the test repo and copies it, off the critical path
    testers: Executor  # runs each notebook's pytest, started early and held at a gate
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, kw_only=True)
class NotebookResult:
    name: str
    notebook: str
    slot: str
    steps: dict[str, record.Status]
    codes: dict[str, int]
    exit_code: int
    failed_step: str | None
    error: str | None
    duration_s: float

    def __str__(self) -> str:
        if self.failed_step is None:
            return f"{self.name}: success in {self.duration_s:.1f}s"
        return f"{self.name}: {self.failed_step} failed ({self.exit_code}): {self.error or ''}".rstrip()


def run_notebook(flow: Flow, job: NotebookJob, slot: Slot) -> NotebookResult:
    """Every step for one notebook; reporting steps run after a failure too."""
    t0 = time.monotonic()
    job.dir.mkdir(parents=True, exist_ok=True)
    cache = StepCache(job.dir, flow.resume)
    steps: dict[str, record.Status] = {}
    codes: dict[str, int] = {}

    def note(step: str, status: record.Status, code: int) -> None:
        steps[step], codes[step] = status, code

    copy = flow.background.submit(_copy_test_repo, flow, job) if flow.test_base is not None else None
    early = start_tests(flow, job, copy) if copy is not None else None
    try:
        note("execute", *_execute(flow, job, slot, cache))
        if job.output.exists() and not flow.stop.is_set():
            note("convert", *_convert(job, cache, flow.config.sanitize_html))
        failed = any(c != 0 for c in codes.values())
        if early is not None and copy is not None and not flow.stop.is_set():
            if failed and flow.config.skip_tests_on_failure:
                _record(job.dir, "test", 0, 0.0, None, {"reason": "--skip-tests-on-failure"}, status="skipped")
                note("test", "skipped", 0)
            elif job.html.exists():
                note("stage", *_stage(flow, job, copy))
                if codes["stage"] == 0 and not flow.stop.is_set():
                    note("test", *_test(flow, job, cache, early))
    finally:
        if early is not None:
            early.close("the notebook's tests are not run in this run")
    # the summaries are written once for all notebooks, by flow.report.finish_run
    bad = [(s, c) for s, c in codes.items() if c != 0]
    worst = errors.worst([c for _, c in bad])
    failed_step = next((s for s, c in bad if c == worst), None)
    rec = record.read(job.dir, failed_step) if failed_step else None
    return NotebookResult(
        name=job.name, notebook=job.rel, slot=slot.name, steps=steps, codes=codes, exit_code=worst,
        failed_step=failed_step, error=rec.error if rec else None, duration_s=round(time.monotonic() - t0, 3),
    )


def _execute(flow: Flow, job: NotebookJob, slot: Slot, cache: StepCache) -> tuple[record.Status, int]:
    cfg = flow.config
    params = cfgmod.notebook_parameters(cfg)
    timeout = cfgmod.timeout_for(cfg, job.rel, job.stem)
    inputs = digest(job.notebook, params, cfg.profile, cfg.kernel, cfg.gpu, cfg.rmm, cfg.rmm_pool_size,
                    cfg.max_cells, cfg.max_genes, cfg.seed, timeout, cfg.cell_timeout, cfg.pass_env)
    if cache.fresh("execute", inputs, [job.output]):
        log.info(f"{job.name}: execute unchanged since the last run, kept (--resume)")
        return "kept", 0
    cmd = [sys.executable, "-m", "gpuflow.execute", str(job.notebook), str(job.output),
           "-y", json.dumps(params), "--kernel", cfg.kernel, "--cwd", str(job.notebook.parent),
           "--log", str(ArtifactDir(job.dir).papermill_log), "--record-dir", str(job.dir),
           # INFO, as the Tekton workflow ran papermill: kernel message dumps drown parallel logs
           "--no-progress-bar", "--log-level", "INFO", *_guard_flags(cfg)]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    if cfg.cell_timeout is not None:
        cmd += ["--cell-timeout", str(cfg.cell_timeout)]
    for name in cfg.pass_env:
        cmd += ["--pass-env", name]
    env = {**os.environ, **slot.env()}
    for attempt in range(1, KERNEL_START_TRIES + 1):
        cache.intend("execute", inputs)
        t0, started = time.monotonic(), record.utc_now()
        done = proc.call(cmd, env=env, check=False, on_line=lambda line: log.raw(f"[{job.name}] {line}"))
        rec = record.read(job.dir, "execute")
        if rec is None:  # the child died before it could record anything (a signal: 128 + signum)
            died = done.returncode if done.returncode > 0 else 128 - done.returncode
            _record(job.dir, "execute", died, time.monotonic() - t0, _tail(done.stdout), {}, started=started)
            rec = record.read(job.dir, "execute")
        code = rec.exit_code if rec is not None else errors.INTERNAL
        if not _kernel_never_started(code, rec) or attempt == KERNEL_START_TRIES or flow.stop.is_set():
            break
        log.warning(f"{job.name}: the kernel did not start (try {attempt}); starting a fresh one")
        time.sleep(attempt)
    cache.stamp("execute", inputs, [job.output])
    return _status(code)


def _kernel_never_started(code: int, rec: record.StepRecord | None) -> bool:
    # A kernel that dies or hangs while starting (a port taken between being
    # picked and bound) has executed nothing; a fresh process gets new ports.
    if code not in (errors.KernelDied.exit_code, errors.INTERNAL) or rec is None:
        return False
    # executed_cells is 0, not absent: absent means the execute process itself
    # died mid-run, which a retry would only repeat
    return rec.view(record.ExecuteDetails).executed_cells == 0


def _guard_flags(cfg: cfgmod.FlowConfig) -> list[str]:
    flags = ["--gpu", cfg.gpu, "--rmm", cfg.rmm]
    if cfg.rmm_pool_size:
        flags += ["--rmm-pool-size", cfg.rmm_pool_size]
    if cfg.lite:
        flags += ["--lite", "--max-cells", str(cfg.max_cells), "--max-genes", str(cfg.max_genes),
                  "--seed", str(cfg.seed)]
    return flags


def _convert(job: NotebookJob, cache: StepCache, sanitize_html: bool) -> tuple[record.Status, int]:
    from gpuflow.convert import convert_notebook

    inputs = digest(job.output, "lab", sanitize_html)

    def convert() -> dict[str, Any]:
        res = convert_notebook(job.output, job.html, log_path=ArtifactDir(job.dir).nbconvert_log,
                               sanitize_html=sanitize_html)
        return {"html": str(res.html), "bytes": res.bytes}

    return in_process(job.dir, "convert", convert, cache=cache, inputs=inputs, outputs=[job.html])


def _copy_test_repo(flow: Flow, job: NotebookJob) -> Path:
    """This notebook's own copy of the prepared test repo, made while it
    executes: concurrent pytest runs then share no input/ and no .coverage."""
    from gpuflow.stage import fetch_repo

    assert flow.test_base is not None
    dest = RunDir(flow.run_dir).notebook_test_repo(job.name)
    fetch_repo(str(flow.test_base.result().repo), dest)
    return dest


def _stage(flow: Flow, job: NotebookJob, copy: Future[Path]) -> tuple[record.Status, int]:
    from gpuflow.stage import place_html

    def stage() -> dict[str, Any]:
        dest = copy.result()
        target = place_html(job.html, dest, input_dir="input", name=staged_name(flow.config, job.stem))
        return {"repo": str(dest), "target": str(target)}

    return in_process(job.dir, "stage", stage)


def staged_name(cfg: cfgmod.FlowConfig, stem: str) -> str:
    try:
        return cfg.html_name.format(stem=stem, lite="_lite" if cfg.lite else "", profile=cfg.profile)
    except (KeyError, IndexError, ValueError) as exc:
        raise errors.ConfigError(f"html_name {cfg.html_name!r}: bad placeholder {exc}") from None


@dataclass(frozen=True, kw_only=True)
class EarlyTests:
    """A notebook's pytest, started while the notebook executes so that Python,
    pytest, its plugins and coverage load off the critical path; it waits at
    `gate` before collecting (gpuflow/_pytest_gate.py) and writes into
    `out_dir`, a scratch dir, until the run lets it go."""

    gate: Path
    out_dir: Path
    future: Future[Any]

    def release(self, verdict: str) -> None:
        if not self.gate.exists():
            atomic_write_text(self.gate, verdict)

    def close(self, reason: str) -> None:
        # a pytest that was never let go ends before it collects anything
        self.release(reason)
        try:
            self.future.result(timeout=60)
        except Exception:  # noqa: BLE001 - its outputs are scratch, its failure unused
            pass


def start_tests(flow: Flow, job: NotebookJob, copy: Future[Path]) -> EarlyTests:
    from gpuflow.test import run_tests

    gate, out_dir = RunDir(flow.run_dir).pytest_gate(job.name), RunDir(flow.run_dir).pytest_scratch(job.name).path
    gate.unlink(missing_ok=True)

    def tests() -> Any:
        repo = copy.result()
        base = flow.test_base.result()  # type: ignore[union-attr]
        return run_tests(repo, marker=flow.config.marker, out_dir=out_dir, install=False,
                         python=base.python, gate=gate)

    return EarlyTests(gate=gate, out_dir=out_dir, future=flow.testers.submit(tests))


def _test(flow: Flow, job: NotebookJob, cache: StepCache, early: EarlyTests) -> tuple[record.Status, int]:
    assert flow.test_base is not None
    cfg = flow.config
    outputs = list(ArtifactDir(job.dir).test_outputs)  # coverage.xml too: a kept test step needs it
    inputs = digest(job.html, cfg.test_repo, cfg.marker, staged_name(cfg, job.stem))

    def test() -> dict[str, Any]:
        early.release("go")
        res = early.future.result()
        for name in artifacts.TEST_OUTPUTS:  # the reports move from the scratch dir to the notebook's artifacts
            if (early.out_dir / name).exists():
                os.replace(early.out_dir / name, job.dir / name)
        res.raise_for_status()
        return {**res.details(), "out_dir": str(job.dir)}

    return in_process(job.dir, "test", test, cache=cache, inputs=inputs, outputs=outputs)


def in_process(
    directory: Path, step: str, fn: Callable[[], dict[str, Any]], *, cache: StepCache | None = None,
    inputs: str | None = None, outputs: list[Path] | None = None,
) -> tuple[record.Status, int]:
    """Run a step function here, map what it raises to an exit code, record it."""
    if cache is not None and inputs is not None and cache.fresh(step, inputs, outputs or []):
        log.info(f"{directory.name}: {step} unchanged since the last run, kept (--resume)")
        return "kept", 0
    t0, started = time.monotonic(), record.utc_now()
    details: dict[str, Any] = {}
    error: str | None = None
    try:
        details = fn()
        code = 0
    except errors.GpuflowError as exc:
        code = exc.exit_code
        error = fail_line(f"gpuflow.{step}", exc)
        details = dict(getattr(exc, "details", None) or {})
    except Exception as exc:  # a bug in a step: record it, keep the other notebooks going
        code, error = errors.INTERNAL, fail_line(f"gpuflow.{step}", exc)
        log.error(traceback.format_exc())
    if error:
        log.error(f"{directory.name}: {error}")
    if inputs is not None:
        details = stamped(details, inputs, outputs or [])
    _record(directory, step, code, time.monotonic() - t0, error, details, started=started)
    return _status(code)


def _record(
    directory: Path, step: str, code: int, took: float, error: str | None, details: dict[str, Any],
    *, started: str | None = None, status: record.Status | None = None,
) -> None:
    record.write(directory, record.finished(step, code, took, error=error, details=details,
                                            started_at=started, status=status))


def _status(code: int) -> tuple[record.Status, int]:
    return ("success" if code == 0 else "failed"), code


def _tail(text: str) -> str | None:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None

