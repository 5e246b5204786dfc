"""The report model: what a summary says about one notebook or one run, as
written to summary.json and rendered to Markdown and HTML."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from gpuflow.core import tables
from gpuflow.core.record import ExecuteDetails, Status
from gpuflow.report.findings import Findings
from gpuflow.report.junit import TestCounts


@dataclass(frozen=True, kw_only=True)
class StepRow:
    """One step of a notebook (or, in a run summary, one notebook of the run)."""

    name: str
    status: Status
    exit_code: int | None
    duration_s: float | None
    error: str | None  # the first line, without terminal colours
    note: str | None = None  # why a skipped step was skipped ("no test repo")

    @property
    def shown(self) -> str:
        """The status as people read it: "skipped (no test repo)"."""
        return f"{self.status} ({self.note})" if self.note else self.status


@dataclass(frozen=True, kw_only=True)
class TestsUnreadable:
    """A JUnit XML that is there but cannot be read."""

    error: str

    __test__ = False  # not a pytest test class


@dataclass(frozen=True, kw_only=True)
class GpuFacts:
    """What telemetry.json says about the GPU (the schema `gpuflow.gpu.telemetry.summarize` writes)."""

    name: str | None
    peak_memory_mib: float | None
    mean_utilization_pct: float | None
    samples: int
    memory_series: list[tuple[float, float]]  # (seconds, MiB), for the chart


@dataclass(frozen=True, kw_only=True)
class ArtifactFile:
    path: str  # relative to the artifact dir when it is inside it
    bytes: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class SlotUse:
    """How one slot of `gpuflow run` was used."""

    gpu: str | None
    notebooks: list[str]
    busy_s: float
    busy_fraction: float
    gpu_utilisation_mean: float | None


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """How `gpuflow run` spread its notebooks over the slots (also run.json's head)."""

    run_id: str
    exit_code: int
    profile: str
    makespan_s: float
    slots: dict[str, SlotUse]
    stopped: str | None = None
    error: str | None = None  # a run-level step that failed before any notebook ran
    packed: dict[str, Packed] = field(default_factory=dict)  # --pack: each packed notebook's share


@dataclass(frozen=True, kw_only=True)
class Packed:
    """A notebook that `gpuflow run --pack` ran on a shared GPU."""

    gpu: str | None
    share_bytes: int | None  # its RMM pool cap; None: it ran alone on a whole GPU
    retried: str | None = None  # why it ran again, alone on a whole GPU


@dataclass(frozen=True, kw_only=True)
class Summary:
    title: str
    status: Status  # "success", "failed", or "skipped" (a notebook not run on purpose, or a run of only such)
    exit_code: int
    steps: list[StepRow]
    tests: TestCounts | TestsUnreadable | None
    notebook: ExecuteDetails | None
    gpu: GpuFacts | None
    artifacts: list[ArtifactFile]
    missing: list[str] = field(default_factory=list)
    skip_reason: str | None = None
    findings: Findings | None = None  # warnings and errors in the executed notebook's outputs

    def __str__(self) -> str:
        why = f": {self.skip_reason}" if self.skip_reason else ""
        return f"{self.title}: {self.status}{why} (exit {self.exit_code})"

    def _repr_html_(self) -> str:
        rows = [(s.name, s.status, s.exit_code, s.duration_s, s.error) for s in self.steps]
        return tables.table(rows, header=("step", "status", "exit", "seconds", "error"), caption=str(self))

    @property
    def counts(self) -> TestCounts | None:
        """The test counts, when there is a readable JUnit XML."""
        return self.tests if isinstance(self.tests, TestCounts) else None

    def to_dict(self) -> dict[str, Any]:
        """summary.json's schema: the test counts carry their total, and a
        notebook dir without an execute record has `"notebook": {}`."""
        data = {k: v for k, v in asdict(self).items() if k not in ("tests", "notebook")}
        tests: dict[str, Any] | None = None
        if isinstance(self.tests, TestCounts):
            tests = {**asdict(self.tests), "failing": list(self.tests.failing), "total": self.tests.total}
        elif self.tests is not None:
            tests = asdict(self.tests)
        return {**data, "tests": tests, "notebook": asdict(self.notebook) if self.notebook else {}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


@dataclass(frozen=True, kw_only=True)
class RunSummary(Summary):
    """A run's summary: a step row per notebook, each notebook's own summary,
    and, from `gpuflow run`, the schedule."""

    notebooks: list[tuple[str, Summary]] = field(default_factory=list)
    schedule: Schedule | None = None

    def to_dict(self) -> dict[str, Any]:
        base = Summary.to_dict(self)
        del base["schedule"]
        data = {**base, "notebooks": {name: s.to_dict() for name, s in self.notebooks}}
        return {**data, "run": asdict(self.schedule)} if self.schedule else data
