"""One notebook's way through `gpuflow run`: execute -> convert -> stage ->
test, calling the same step functions as the step CLIs, each through the
same step harness (`gpuflow.core.step`): resume check, call, record, stamp.

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
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuflow.core import artifacts, errors, proc, record, tables
from gpuflow.core import step as harness
from gpuflow.core.artifacts import ArtifactDir, RunDir
from gpuflow.core.fsutil import atomic_write_text
from gpuflow.core.log import log
from gpuflow.flow import config as cfgmod
from gpuflow.flow.pack import out_of_memory
from gpuflow.flow.requirements import Requires
from gpuflow.flow.resume import StepCache, digest
from gpuflow.flow.schedule import Slot

if TYPE_CHECKING:
    from gpuflow.stage import RepoResult

NO_TEST_REPO = "no test repo"
KERNEL_START_TRIES = 2  # execute retries once in-process; this one is a fresh process, fresh ports


@dataclass(frozen=True, kw_only=True)
class NotebookJob:
    notebook: Path  # inside the notebook repo
    rel: str  # as the config named it, relative to the repo
    stem: str
    name: str  # stem, plus _lite in the lite profile: the artifact dir and file prefix
    dir: Path
    skip: str | None = None  # why it is not run (selection, unmet requirements)
    requires: Requires = field(default_factory=Requires)
    # --pack: the GPU the plan put it on, the bytes it claims there and its pool cap
    gpu: str | None = None
    need: int | None = None
    share: int | None = None
    retried: str | None = None  # why this is its second run (alone, after running out of memory packed)

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
    # the signal that stopped the run, when one did (`stop` also means --fail-fast)
    stopped_by: errors.Stopped | None = None


@dataclass(frozen=True, kw_only=True)
class NotebookResult:
    name: str
    notebook: str
    slot: str
    steps: dict[str, record.Status]
    notes: dict[str, str]  # why a step was skipped
    codes: dict[str, int]
    exit_code: int
    failed_step: str | None
    error: str | None
    duration_s: float
    skip_reason: str | None = None
    retried: str | None = None

    def __str__(self) -> str:
        if self.skip_reason is not None:
            return f"{self.name}: skipped: {self.skip_reason}"
        if self.failed_step is None:
            return f"{self.name}: success in {self.duration_s:.1f}s"
        return f"{self.name}: {self.failed_step} failed ({self.exit_code}): {self.error or ''}".rstrip()

    def _repr_html_(self) -> str:
        return tables.dataclass_table(self)


def run_notebook(flow: Flow, job: NotebookJob, slot: Slot) -> NotebookResult:
    """Every step for one notebook, each through the step harness; reporting
    steps run after a failure too."""
    from gpuflow.stage import STEP as STAGE
    from gpuflow.test import STEP as TEST

    t0 = time.monotonic()
    job.dir.mkdir(parents=True, exist_ok=True)
    if job.skip is not None:
        return skip_notebook(job, slot)
    cache = StepCache(job.dir, flow.resume)
    ran: dict[str, harness.Ran[Any]] = {}

    def note(step: harness.Ran[Any]) -> harness.Ran[Any]:
        ran[step.step] = step
        if step.failure is not None:  # raised here: say so (a child process said it itself)
            if step.failure.traceback:
                log.error(step.failure.traceback)
            log.error(f"{job.name}: {step.error}")
        return step

    copy = flow.background.submit(_copy_test_repo, flow, job) if flow.test_base is not None else None
    early = start_tests(flow, job, copy) if copy is not None else None
    try:
        executed = note(_execute(flow, job, slot, cache))
        if executed.status == "success" and executed.record is not None:
            _record_history(flow.config, job, executed.record.duration_s)
        if job.share is not None and executed.exit_code != 0 and out_of_memory(executed.error):
            pass  # ran out of memory in its share: it runs again alone (flow.suite.again), report nothing yet
        elif job.output.exists() and not flow.stop.is_set():
            note(_convert(job, cache, flow.config.sanitize_html))
        failed = any(r.exit_code != 0 for r in ran.values())
        if flow.test_base is None and not flow.stop.is_set():
            # nothing was named to judge these notebooks: the run is execute and convert
            for step in (STAGE, TEST):
                note(harness.skipped(step, job.dir, NO_TEST_REPO))
        if early is not None and copy is not None and not flow.stop.is_set():
            if failed and flow.config.skip_tests_on_failure:
                note(harness.skipped(TEST, job.dir, "--skip-tests-on-failure"))
            elif job.html.exists():
                if note(_stage(flow, job, copy)).exit_code == 0 and not flow.stop.is_set():
                    note(_test(flow, job, cache, early))
        if flow.stopped_by is not None:
            _note_stop(flow.stopped_by, job, ran, note)
    finally:
        if early is not None:
            early.close("the notebook's tests are not run in this run")
    # the summaries are written once for all notebooks, by flow.report.finish_run
    bad = [r for r in ran.values() if r.exit_code != 0]
    worst = errors.worst([r.exit_code for r in bad])
    failed_step = next((r for r in bad if r.exit_code == worst), None)
    return NotebookResult(
        name=job.name, notebook=job.rel, slot=slot.name, steps={s: r.status for s, r in ran.items()},
        notes={s: r.record.view(record.SkipDetails).reason or "" for s, r in ran.items()
               if r.status == "skipped" and r.record is not None},
        codes={s: r.exit_code for s, r in ran.items()}, exit_code=worst,
        failed_step=failed_step.step if failed_step else None, error=failed_step.error if failed_step else None,
        duration_s=round(time.monotonic() - t0, 3), retried=job.retried,
    )


def _note_stop(stopped: errors.Stopped, job: NotebookJob, ran: dict[str, harness.Ran[Any]],
               note: Callable[[harness.Ran[Any]], harness.Ran[Any]]) -> None:
    """The first step a signal kept from running is recorded as stopped by
    it (143, 130), so the notebook's summary says what happened to it."""
    from gpuflow.convert import STEP as CONVERT
    from gpuflow.stage import STEP as STAGE
    from gpuflow.test import STEP as TEST

    if any(isinstance(r.exception, errors.Stopped) or r.exit_code == stopped.exit_code for r in ran.values()):
        return  # a step already says so
    for step in (CONVERT, STAGE, TEST):
        if step.name not in ran:
            def raise_stop() -> None:
                raise type(stopped)(f"not run: {stopped}", signum=stopped.signum)

            note(harness.run(step, job.dir, raise_stop))
            return


def _record_history(cfg: cfgmod.FlowConfig, job: NotebookJob, duration_s: float) -> None:
    """Note what the notebook just used, for the next `--pack`; never fails the run."""
    from gpuflow.flow import history

    try:
        measured = history.from_telemetry(ArtifactDir(job.dir).telemetry, duration_s, packed=job.share is not None)
        history.record(*history.key_for(cfg, job.notebook, job.rel), measured)
    except OSError as exc:
        log.warning(f"{job.name}: could not record its measurements in {history.path()}: {exc}")


def skip_notebook(job: NotebookJob, slot: Slot) -> NotebookResult:
    """Record a notebook not run on purpose: its execute step, skipped with the reason."""
    from gpuflow.execute import STEP as EXECUTE

    assert job.skip is not None
    job.dir.mkdir(parents=True, exist_ok=True)
    harness.skipped(EXECUTE, job.dir, job.skip)
    return NotebookResult(name=job.name, notebook=job.rel, slot=slot.name, steps={"execute": "skipped"},
                          notes={"execute": job.skip}, codes={"execute": 0}, exit_code=0, failed_step=None,
                          error=None, duration_s=0.0, skip_reason=job.skip)


def _execute(flow: Flow, job: NotebookJob, slot: Slot, cache: StepCache) -> harness.Ran[None]:
    from gpuflow.execute import STEP as EXECUTE

    cfg = flow.config
    params = cfgmod.notebook_parameters(cfg)
    timeout = cfgmod.timeout_for(cfg, job.rel, job.stem)
    inputs = digest(job.notebook, params, cfg.profile, cfg.kernel, cfg.gpu, cfg.rmm, cfg.rmm_pool_size,
                    cfg.max_cells, cfg.max_genes, cfg.seed, timeout, cfg.cell_timeout, cfg.pass_env, job.share)
    cmd = [sys.executable, "-m", "gpuflow.execute", str(job.notebook), str(job.output),
           "-y", json.dumps(params), "--kernel", cfg.kernel, "--cwd", str(job.notebook.parent),
           "--log", str(ArtifactDir(job.dir).papermill_log), "--record-dir", str(job.dir),
           # INFO, as the Tekton workflow ran papermill: kernel message dumps drown parallel logs
           "--no-progress-bar", "--log-level", "INFO", *_guard_flags(cfg)]
    if RunDir(flow.run_dir).gpu_facts.is_file():  # the run's one preflight
        cmd += ["--gpu-facts", str(RunDir(flow.run_dir).gpu_facts)]
    if job.share is not None:  # packed: its pool may not grow past its share of the GPU
        cmd += ["--rmm-max-pool-size", str(job.share)]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    if cfg.cell_timeout is not None:
        cmd += ["--cell-timeout", str(cfg.cell_timeout)]
    for name in cfg.pass_env:
        cmd += ["--pass-env", name]
    env = {**os.environ, **slot.env()}

    def spawn() -> proc.Completed:
        return proc.call(cmd, env=env, check=False, on_line=lambda line: log.raw(f"[{job.name}] {line}"))

    resume = harness.Resume(cache, inputs, [job.output])
    attempt = 1
    while True:
        ran = harness.run_child(EXECUTE, job.dir, spawn, resume=resume)
        if not _kernel_never_started(ran) or attempt == KERNEL_START_TRIES or flow.stop.is_set():
            return ran
        log.warning(f"{job.name}: the kernel did not start (try {attempt}); starting a fresh one")
        time.sleep(attempt)
        attempt += 1


def _kernel_never_started(ran: harness.Ran[None]) -> bool:
    # A kernel that dies or hangs while starting (a port taken between being
    # picked and bound) has executed nothing; a fresh process gets new ports.
    if ran.exit_code not in (errors.KernelDied.exit_code, errors.INTERNAL):
        return False
    # executed_cells is 0, not absent: absent means the execute process itself
    # died mid-run, which a retry would only repeat
    return ran.record is not None and ran.record.view(record.ExecuteDetails).executed_cells == 0


def _guard_flags(cfg: cfgmod.FlowConfig) -> list[str]:
    flags = ["--gpu", cfg.gpu, "--rmm", cfg.rmm]
    if cfg.rmm_pool_size:
        flags += ["--rmm-pool-size", cfg.rmm_pool_size]
    if cfg.lite:
        flags += ["--lite", "--max-cells", str(cfg.max_cells), "--max-genes", str(cfg.max_genes),
                  "--seed", str(cfg.seed)]
    return flags


def _convert(job: NotebookJob, cache: StepCache, sanitize_html: bool) -> harness.Ran[Any]:
    from gpuflow.convert import STEP as CONVERT
    from gpuflow.convert import convert_notebook

    resume = harness.Resume(cache, digest(job.output, "lab", sanitize_html), [job.html])
    return harness.run(CONVERT, job.dir, lambda: convert_notebook(
        job.output, job.html, log_path=ArtifactDir(job.dir).nbconvert_log, sanitize_html=sanitize_html,
    ), resume=resume)


def _copy_test_repo(flow: Flow, job: NotebookJob) -> RepoResult:
    """This notebook's own copy of the prepared test repo, made while it
    executes: concurrent pytest runs then share no input/ and no .coverage."""
    from gpuflow.stage import fetch_repo

    assert flow.test_base is not None
    dest = RunDir(flow.run_dir).notebook_test_repo(job.name)
    return fetch_repo(str(flow.test_base.result().repo), dest)


def _stage(flow: Flow, job: NotebookJob, copy: Future[RepoResult]) -> harness.Ran[Any]:
    from gpuflow.stage import STEP as STAGE
    from gpuflow.stage import stage_into

    return harness.run(STAGE, job.dir, lambda: stage_into(
        job.html, copy.result(), input_dir="input", name=staged_name(flow.config, job.stem)))


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
    lines: HeldLines

    def release(self, verdict: str) -> None:
        if verdict == "go":
            self.lines.let_go()
        if not self.gate.exists():
            atomic_write_text(self.gate, verdict)

    def close(self, reason: str) -> None:
        # a pytest that was never let go ends before it collects anything
        self.release(reason)
        try:
            self.future.result(timeout=60)
        except Exception:  # noqa: BLE001 - its outputs are scratch, its failure unused
            pass


class HeldLines:
    """A notebook's early pytest output, each line under the notebook's name
    (parallel notebooks interleave): held until its tests are let go, and
    dropped when they never are, so a kept or skipped test step prints
    nothing. The reports' scratch paths read as the artifact dir they move to."""

    def __init__(self, name: str, scratch: Path, final: Path) -> None:
        self.name, self.scratch, self.final = name, str(scratch), str(final)
        self.held: list[str] = []
        self.live = False
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            if self.live:
                self._print(line)
            else:
                self.held.append(line)

    def let_go(self) -> None:
        with self.lock:
            self.live = True
            for line in self.held:
                self._print(line)
            self.held.clear()

    def _print(self, line: str) -> None:
        log.raw(f"[{self.name}] {line.replace(self.scratch, self.final)}")


def start_tests(flow: Flow, job: NotebookJob, copy: Future[RepoResult]) -> EarlyTests:
    from gpuflow.test import run_tests

    gate, out_dir = RunDir(flow.run_dir).pytest_gate(job.name), RunDir(flow.run_dir).pytest_scratch(job.name).path
    gate.unlink(missing_ok=True)
    lines = HeldLines(job.name, out_dir.resolve(), job.dir.resolve())

    def tests() -> Any:
        repo = copy.result().path
        base = flow.test_base.result()  # type: ignore[union-attr]
        return run_tests(repo, marker=flow.config.marker, out_dir=out_dir, install=False,
                         python=base.python, gate=gate, echo=lines, pass_env=flow.config.pass_env)

    return EarlyTests(gate=gate, out_dir=out_dir, future=flow.testers.submit(tests), lines=lines)


def _test(flow: Flow, job: NotebookJob, cache: StepCache, early: EarlyTests) -> harness.Ran[Any]:
    from gpuflow.test import STEP as TEST
    from gpuflow.test import TestResult

    assert flow.test_base is not None
    cfg = flow.config
    outputs = list(ArtifactDir(job.dir).test_outputs)  # coverage.xml too: a kept test step needs it
    inputs = digest(job.html, cfg.test_repo, cfg.marker, staged_name(cfg, job.stem))

    def test() -> TestResult:
        early.release("go")
        res: TestResult = early.future.result()
        for name in artifacts.TEST_OUTPUTS:  # the reports move from the scratch dir to the notebook's artifacts
            if (early.out_dir / name).exists():
                os.replace(early.out_dir / name, job.dir / name)
        res = replace(res, out_dir=job.dir)
        res.raise_for_status()
        return res

    return harness.run(TEST, job.dir, test, resume=harness.Resume(cache, inputs, outputs))
