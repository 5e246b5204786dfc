"""Run a test repo's pytest the way the notebook workflows do, with coverage,
JUnit XML and a self-contained HTML report, and read the JUnit XML back into
counts.

Environment, in order:
1. `python=` given: that interpreter, as it is.
2. `install=False`: the current interpreter, which must already satisfy the
   repo's requirements*.txt (`missing test dependency X; bake it into the
   image` otherwise: the Tekton Pipeline runs without network to install).
3. A Poetry project and `poetry` on PATH: `poetry install --no-root`, then
   the interpreter of Poetry's env (what `poetry run` would use).
4. The current interpreter when it already satisfies the repo's
   requirements*.txt (nothing to install, nothing to wait for).
5. A venv cached under `cache_dir()/venvs/<hash of the requirement files>`,
   created once: `gpuflow run` prepares it once for all notebooks.
pytest-cov and pytest-html are installed when missing; where they cannot be
(no install), their flags are dropped with a warning instead of pytest
failing on "unrecognized arguments".
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from gpuflow.core import artifacts, errors, proc, secrets, tables
from gpuflow.core.artifacts import ArtifactDir
from gpuflow.core.cachedir import cache_dir
from gpuflow.core.fsutil import atomic_write_text
from gpuflow.core.log import log, redact
from gpuflow.core.step import Step
from gpuflow.report.junit import TestCounts, TestDetails, parse_junit

PLUGINS = {"pytest_cov": "pytest-cov", "pytest_html": "pytest-html"}
REQUIREMENT_FILES = ("requirements.txt", "requirements-test.txt", "requirements-dev.txt")
GATE_PLUGIN = "gpuflow_pytest_gate"
ESCAPE_PLUGIN = "gpuflow_pytest_html_escape"


@dataclass(frozen=True, kw_only=True)
class TestResult(TestCounts):
    exit_code: int
    out_dir: Path
    python: str
    duration_s: float

    __test__ = False

    def __str__(self) -> str:
        return (f"{self.passed} passed, {self.failed} failed, {self.errors} errors, {self.skipped} skipped, "
                f"{self.xfailed} xfailed, {self.xpassed} xpassed (exit {self.exit_code})")

    def _repr_html_(self) -> str:
        return tables.dataclass_table(self)

    def details(self) -> dict[str, object]:
        """The step record's details, in the shape `TestDetails` reads."""
        counts = {f.name: getattr(self, f.name) for f in fields(TestCounts)}
        return asdict(TestDetails(**counts, out_dir=str(self.out_dir)))

    def raise_for_status(self) -> None:
        """Raise the exception matching pytest's exit status (nothing on success)."""
        exc: errors.GpuflowError
        if self.exit_code == 0:
            return
        if self.exit_code == 1:
            exc = errors.TestsFailed(f"{self.failed + self.errors} of {self.total} tests failed: "
                                     + ", ".join(self.failing[:3]))
        elif self.exit_code == 5:
            exc = errors.NoTestsCollected("pytest collected no tests (check --marker)")
        elif self.exit_code > 128:
            stop = errors.Interrupted if self.exit_code == errors.Interrupted.exit_code else errors.Terminated
            raise stop(f"pytest was stopped by signal {self.exit_code - 128}", signum=self.exit_code - 128,
                       details=self.details())
        else:
            exc = errors.UsageError(f"pytest could not run the tests (exit {self.exit_code}): "
                                    f"usage or collection error, see {artifacts.PYTEST_LOG}")
        exc.details = self.details()
        raise exc


def _is_poetry(repo_dir: Path) -> bool:
    pyproject = repo_dir / "pyproject.toml"
    if not pyproject.is_file():
        return False
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise errors.InputError(f"{pyproject}: {exc}") from None
    return "poetry" in data.get("tool", {})


def _requirement_files(repo_dir: Path) -> list[Path]:
    return [repo_dir / n for n in REQUIREMENT_FILES if (repo_dir / n).is_file()]


def _judged(requirement_files: Sequence[Path]) -> Iterator[tuple[str, bool | None]]:
    """Each requirement line and whether the current interpreter satisfies it;
    None for a line that is no plain requirement (an option, URL or editable
    install), which cannot be judged."""
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    for path in requirement_files:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            try:
                req = Requirement(line)
            except InvalidRequirement:
                yield line, None
                continue
            if req.marker is not None and not req.marker.evaluate():
                continue
            try:
                version = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                yield line, False
                continue
            yield line, req.specifier.contains(version, prereleases=True)


def satisfied(requirement_files: Sequence[Path]) -> bool:
    """Whether the current interpreter already has every listed requirement.
    Anything we cannot judge (options, URLs, editable) counts as unsatisfied."""
    return all(ok for _, ok in _judged(requirement_files))


def unmet(requirement_files: Sequence[Path]) -> list[str]:
    """The listed requirements the current interpreter certainly lacks."""
    return [line for line, ok in _judged(requirement_files) if ok is False]


def _install(cmd: list[str], cwd: Path | None = None) -> None:
    # pip reads PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX... from our environment: it is passed on
    try:
        proc.call(cmd, cwd=cwd, on_line=log.raw)
    except errors.CommandError as exc:
        raise errors.InfraError(f"installing the test environment failed: {exc}") from None
    finally:
        # an install changes what an interpreter can import: the next probe looks again
        _missing_plugins.cache_clear()


def _venv(repo_dir: Path, files: list[Path]) -> str:
    digest = hashlib.sha256(sys.version.encode())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    folder = cache_dir() / "venvs" / digest.hexdigest()[:16]
    python = folder / "bin" / "python"
    if (folder / ".complete").is_file():
        return str(python)
    _install([sys.executable, "-m", "venv", "--clear", str(folder)])
    reqs = [arg for path in files for arg in ("-r", str(path))]
    _install([str(python), "-m", "pip", "install", "-q", "pytest", *PLUGINS.values(), *reqs], cwd=repo_dir)
    (folder / ".complete").write_text("ok\n", encoding="utf-8")
    return str(python)


@functools.lru_cache(maxsize=8)
def _missing_plugins(python: str) -> list[str]:
    # one probe per interpreter and process: `gpuflow run` tests many notebooks with one env
    found = proc.call([python, "-c", "import importlib.util as u, sys; "
                      f"print(' '.join(m for m in {list(PLUGINS)!r} if u.find_spec(m) is None))"],
                     echo=False)
    return [PLUGINS[m] for m in found.stdout.split()]


def python_for(repo_dir: Path, *, install: bool = True, python: str | None = None) -> str:
    """The interpreter to run `repo_dir`'s tests with, installing what is needed."""
    repo_dir = Path(repo_dir)
    if python is None and not install:
        missing = unmet(_requirement_files(repo_dir))
        if missing:
            raise errors.ConfigError(f"missing test dependency {', '.join(missing)}; bake it into the image")
    if python is not None or not install:
        return python or sys.executable
    if _is_poetry(repo_dir) and proc.which("poetry"):
        _install(["poetry", "install", "--no-interaction", "--no-root"], cwd=repo_dir)
        chosen = proc.call(["poetry", "env", "info", "--executable"], cwd=repo_dir).stdout.strip()
    elif satisfied(_requirement_files(repo_dir)):
        chosen = sys.executable
    else:
        chosen = _venv(repo_dir, _requirement_files(repo_dir))
    missing = _missing_plugins(chosen)
    if missing:
        _install([chosen, "-m", "pip", "install", "-q", *missing])
    return chosen


def pytest_command(python: str, marker: str, out_dir: Path, plugins_missing: Sequence[str] = ()) -> list[str]:
    out = ArtifactDir(out_dir)
    cmd = [python, "-m", "pytest", "-m", marker, "--override-ini", "addopts=", f"--junitxml={out.junit_xml}"]
    if "pytest-cov" not in plugins_missing:
        cmd += ["--cov=./", f"--cov-report=xml:{out.coverage_xml}"]
    if "pytest-html" not in plugins_missing:
        cmd += [f"--html={out.pytest_html}", "--self-contained-html"]
    return cmd


def gate_env(gate: Path) -> dict[str, str]:
    """The environment that makes pytest wait at `gate` (see gpuflow/_pytest_gate.py):
    a copy of the plugin beside the gate, on PYTHONPATH, so the test env needs no gpuflow."""
    from gpuflow._embedded import pytest_gate as _pytest_gate

    return {**_plugin_env(gate.parent / "pytest-plugin", {GATE_PLUGIN: _pytest_gate.__file__}),
            _pytest_gate.GATE_ENV: str(gate)}


def _plugin_env(plugin_dir: Path, plugins: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` with copies of the embedded pytest plugins on PYTHONPATH."""
    plugin_dir.mkdir(parents=True, exist_ok=True)
    for name, source in plugins.items():
        shutil.copyfile(source, plugin_dir / f"{name}.py")
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugin_dir), env.get("PYTHONPATH", "")) if p)
    return env


def run_tests(
    repo_dir: Path, *, marker: str, out_dir: Path, install: bool = True, python: str | None = None,
    gate: Path | None = None, echo: Callable[[str], None] | None = None, pass_env: Sequence[str] = (),
) -> TestResult:
    """Run the repo's pytest; the result carries the counts from its JUnit XML.
    Test failures do not raise: call `raise_for_status()` for that.

    With `gate`, pytest starts now and waits before collection until the file
    `gate` says "go" (`gpuflow run` starts it while the notebook executes).
    `echo` gets pytest's output lines (default: the console as they come)."""
    repo_dir, out_dir = Path(repo_dir), Path(out_dir).resolve()
    if not repo_dir.is_dir():
        raise errors.InputError(f"{repo_dir}: no such test repo")
    t0 = time.monotonic()
    chosen = python_for(repo_dir, install=install, python=python)
    missing = _missing_plugins(chosen)
    for plugin in missing:
        log.warning(f"{plugin} is not installed for {chosen}: its report is skipped")
    out_dir.mkdir(parents=True, exist_ok=True)
    junit = ArtifactDir(out_dir).junit_xml
    junit.unlink(missing_ok=True)  # never read a previous run's results
    cmd = pytest_command(chosen, marker, out_dir, missing)
    # the test repo's code runs here: it gets the runner's environment without its secrets
    env = secrets.child_env(gate_env(gate) if gate is not None else None, pass_env)
    if gate is not None:
        cmd = [*cmd, "-p", GATE_PLUGIN]
    with tempfile.TemporaryDirectory(prefix="gpuflow-pytest-") as plugins:
        if "pytest-html" not in missing:
            from gpuflow._embedded import pytest_html_escape

            env = _plugin_env(Path(plugins), {ESCAPE_PLUGIN: pytest_html_escape.__file__}, env)
            cmd = [*cmd, "-p", ESCAPE_PLUGIN]
        with open(ArtifactDir(out_dir).pytest_log, "w", encoding="utf-8") as log_file:

            def on_line(line: str) -> None:
                log_file.write(redact(line))  # redacted as stderr is: the log is uploaded
                log_file.flush()
                (echo or log.raw)(line)

            done = proc.call(cmd, cwd=repo_dir, check=False, env=env, on_line=on_line)
    _redact_reports(ArtifactDir(out_dir))
    counts = parse_junit(junit, done.stdout) if junit.is_file() else TestCounts()
    # killed by a signal (gpuflow run passes SIGTERM on): 128 + signal, as a shell says it
    code = 128 - done.returncode if done.returncode < 0 else {0: 0, 1: 1, 5: 5}.get(done.returncode, 2)
    return TestResult(**vars(counts), exit_code=code, out_dir=out_dir, python=chosen,
                      duration_s=round(time.monotonic() - t0, 3))


def _redact_reports(out: ArtifactDir) -> None:
    # the test repo's tests may print a secret they found; the reports are uploaded
    for path in (out.junit_xml, out.pytest_html):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        clean = redact(text)
        if clean != text:
            atomic_write_text(path, clean)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo_dir", type=Path, help="the test repo (with the HTML staged in it)")
    p.add_argument("--marker", required=True, help="pytest -m expression, e.g. single_cell")
    p.add_argument("--out-dir", type=Path, required=True, help="where the reports and the log go")
    p.add_argument("--no-install", dest="install", action="store_false",
                   help="use the current interpreter as it is (offline)")
    p.add_argument("--python", default=None, help="run the tests with this interpreter, as it is")
    p.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                   help="give pytest this variable although it looks like a secret (repeatable)")


def _call(args: argparse.Namespace) -> TestResult:
    result = run_tests(args.repo_dir, marker=args.marker, out_dir=args.out_dir, install=args.install,
                       python=args.python, pass_env=args.pass_env)
    log.info(str(result))
    result.raise_for_status()
    return result


STEP = Step(
    name="test", description="Run a test repo's pytest with coverage, JUnit XML and an HTML report.",
    add_arguments=add_arguments, call=_call, details=TestResult.details,
    record_dir=lambda a: a.record_dir or a.out_dir,
)


def main(argv: Sequence[str] | None = None) -> int:
    return STEP.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
