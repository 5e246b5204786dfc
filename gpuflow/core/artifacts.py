"""The artifact layout: every file a step writes or reads, named once.

A notebook's artifact dir holds what its steps leave (output notebook and
HTML, logs, test reports, telemetry, step records, summaries). A run dir,
written by `gpuflow run`, holds one artifact dir per notebook plus the run's
own config, schedule, summaries and scratch space. No other module spells
one of these names, so moving a file is a one-line change here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PAPERMILL_LOG = "papermill.log"
NBCONVERT_LOG = "jupyter_nbconvert.log"
COVERAGE_XML = "coverage.xml"
JUNIT_XML = "pytest_results.xml"
PYTEST_HTML = "pytest_report.html"
PYTEST_LOG = "pytest_output.log"
TELEMETRY_JSON = "telemetry.json"
SUMMARY_JSON = "summary.json"
STEP_SUMMARY_MD = "STEP_SUMMARY.md"
INDEX_HTML = "index.html"
RECORD_DIR = "steps"
WORK_DIR = ".work"
# inside WORK_DIR: the run's clones, and each notebook's copy of the test repo
# with its early-started pytest's gate and scratch output
NOTEBOOK_REPO = "repo"
TEST_REPO = "test-repo"
PYTEST_GATE = "pytest-gate"
PYTEST_SCRATCH = "pytest-out"
GPU_FACTS = "gpu-facts.json"
RUN_JSON = "run.json"
CONFIG_JSON = "config.json"
LOCK = ".lock"
# in the cache directory (gpuflow.core.cachedir): what each notebook was measured to need
HISTORY_JSON = "notebook-history.json"

# what `gpuflow test` leaves: a kept test step needs every one of them
TEST_OUTPUTS = (COVERAGE_XML, JUNIT_XML, PYTEST_HTML, PYTEST_LOG)
# what `gpuflow summary` writes, and never counts among the artifacts it lists
SUMMARY_OUTPUTS = (SUMMARY_JSON, STEP_SUMMARY_MD, INDEX_HTML)
# the executed notebook is <name>_output.ipynb, its rendering <name>_output.html
OUTPUT_SUFFIX = "_output"
OUTPUT_HTML_GLOB = f"*{OUTPUT_SUFFIX}.html"
# papermill.log in a notebook's own folder (gpuflow run, --record-dir), and
# <name>.papermill.log where several notebooks were executed into one folder
PAPERMILL_LOG_GLOB = f"*{PAPERMILL_LOG}"


def notebook_name(output: str | os.PathLike[str]) -> str:
    """What a notebook's own files in a shared folder are named after: its
    output notebook's name, without the `_output` suffix."""
    stem = Path(output).stem
    return stem[: -len(OUTPUT_SUFFIX)] if stem.endswith(OUTPUT_SUFFIX) and stem != OUTPUT_SUFFIX else stem


@dataclass(frozen=True)
class ArtifactDir:
    """One notebook's artifact dir (also the dir a step CLI writes into)."""

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    def output_notebook(self, name: str) -> Path:
        return self.path / f"{name}{OUTPUT_SUFFIX}.ipynb"

    def output_html(self, name: str) -> Path:
        return self.path / f"{name}{OUTPUT_SUFFIX}.html"

    @property
    def papermill_log(self) -> Path:
        return self.path / PAPERMILL_LOG

    @property
    def nbconvert_log(self) -> Path:
        return self.path / NBCONVERT_LOG

    @property
    def coverage_xml(self) -> Path:
        return self.path / COVERAGE_XML

    @property
    def junit_xml(self) -> Path:
        return self.path / JUNIT_XML

    @property
    def pytest_html(self) -> Path:
        return self.path / PYTEST_HTML

    @property
    def pytest_log(self) -> Path:
        return self.path / PYTEST_LOG

    @property
    def telemetry(self) -> Path:
        return self.path / TELEMETRY_JSON

    @property
    def summary_json(self) -> Path:
        return self.path / SUMMARY_JSON

    @property
    def step_summary(self) -> Path:
        return self.path / STEP_SUMMARY_MD

    @property
    def index_html(self) -> Path:
        return self.path / INDEX_HTML

    @property
    def records(self) -> Path:
        return self.path / RECORD_DIR

    def record(self, step: str, notebook: str | None = None) -> Path:
        """A step's record; `notebook` names it after its notebook, for a
        folder that several notebooks' steps write into."""
        return self.records / (f"{notebook}.{step}.json" if notebook else f"{step}.json")

    def notebook_log(self, notebook: str) -> Path:
        """The papermill log of one of several notebooks executed into this folder."""
        return self.path / f"{notebook}.{PAPERMILL_LOG}"

    def record_intent(self, step: str) -> Path:
        """Where `--resume` notes a step's inputs before its CLI runs."""
        return self.records / f"{step}.inputs"

    @property
    def test_outputs(self) -> tuple[Path, ...]:
        return tuple(self.path / name for name in TEST_OUTPUTS)

    @property
    def summary_outputs(self) -> tuple[Path, ...]:
        return tuple(self.path / name for name in SUMMARY_OUTPUTS)


@dataclass(frozen=True, init=False)
class RunDir(ArtifactDir):
    """A `gpuflow run` dir: the run's own files, and one `ArtifactDir` per notebook."""

    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def config_json(self) -> Path:
        return self.path / CONFIG_JSON

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def work(self) -> Path:
        """Scratch space (cloned repos, test-repo copies, pytest's early start):
        not an artifact, never summarised."""
        return self.path / WORK_DIR

    def notebook(self, name: str) -> ArtifactDir:
        return ArtifactDir(self.path / name)

    @property
    def gpu_facts(self) -> Path:
        """The run's one GPU preflight, which every notebook's execute reuses."""
        return self.work / GPU_FACTS

    @property
    def notebook_repo(self) -> Path:
        """Where a remote notebook repo is cloned."""
        return self.work / NOTEBOOK_REPO

    @property
    def test_repo(self) -> Path:
        """The test repo as fetched once per run, before each notebook copies it."""
        return self.work / TEST_REPO

    def notebook_work(self, name: str) -> Path:
        return self.work / name

    def notebook_test_repo(self, name: str) -> Path:
        return self.notebook_work(name) / TEST_REPO

    def pytest_gate(self, name: str) -> Path:
        return self.notebook_work(name) / PYTEST_GATE

    def pytest_scratch(self, name: str) -> ArtifactDir:
        """Where a notebook's early pytest writes its reports until the run lets it go."""
        return ArtifactDir(self.notebook_work(name) / PYTEST_SCRATCH)

    def notebook_dirs(self) -> list[ArtifactDir]:
        """The per-notebook dirs that have step records, by name; a dir of
        runs (Tekton's packed groups, one `gpuflow run` each) reads as one run."""
        found = sorted(self.path.iterdir()) if self.path.is_dir() else []
        runs = [p for p in found if p.is_dir() and (p / RUN_JSON).is_file()]  # their steps/ are run-level
        dirs = {p.name: p for p in found if p.is_dir() and (p / RECORD_DIR).is_dir() and p not in runs}
        for run in runs:  # run ids sort by time: a reused workspace's newest run of a notebook wins
            dirs |= {p.name: p for p in sorted(run.iterdir()) if p.is_dir() and (p / RECORD_DIR).is_dir()}
        return [ArtifactDir(dirs[name]) for name in sorted(dirs)]
