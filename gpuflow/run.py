"""`gpuflow run`: the whole flow for one or many notebooks, in one command.

preflight -> notebook repo -> datasets -> (per notebook, over GPU or CPU
slots) execute -> convert -> stage -> test -> summary -> run summary. The
test repo is fetched and its environment prepared once, in the background,
while the first notebooks execute.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from gpuflow.core import artifacts, cli, errors, fsutil, proc
from gpuflow.core import step as harness
from gpuflow.core.artifacts import RunDir
from gpuflow.core.fsutil import atomic_write_text, contained
from gpuflow.core.log import log, redact
from gpuflow.core.secrets import declare as declare_secret
from gpuflow.core.step import Step, Verdict
from gpuflow.flow import config as cfgmod
from gpuflow.flow import report as run_report
from gpuflow.flow import select, suite
from gpuflow.flow.notebook import Flow, NotebookJob, NotebookResult, TestBase, run_notebook, skip_notebook
from gpuflow.flow.report import RunResult
from gpuflow.flow.schedule import Pool, Slot, slots_for
from gpuflow.gpu.devices import default_device
from gpuflow.report.model import Packed

R = TypeVar("R")
# How long a run waits for the children of a crashed run on the same run dir
# to go (they get SIGTERM when it dies, then stop their kernels).
LOCK_WAIT_S = 15.0

# The once-per-run steps, recorded under RUN_DIR/steps/; what one raises ends the run.
PREFLIGHT = Step[dict[str, Any]](name="preflight", details=lambda facts: dict(facts))
REPO = Step[Path](name="repo", details=lambda path: {"path": str(path)})
DATASETS = Step[list[dict[str, Any]]](name="datasets", details=lambda got: {"datasets": got})
TEST_ENV = Step[TestBase](name="test-env", details=lambda base: {"repo": str(base.repo), "python": base.python})


def run_flow(
    resolved: cfgmod.Resolved, *, run_dir: Path, resume: bool = False,
    reconfigure: Any = None,
) -> RunResult:
    """Run every step for every notebook; a failure in one notebook stops
    only that notebook's remaining work steps, never its reporting."""
    with _locked(run_dir):
        return _run_locked(resolved, run_dir=run_dir, resume=resume, reconfigure=reconfigure)


def _warm_convert() -> None:
    # off the critical path: the notebooks execute in child processes while
    # this thread imports nbconvert and compiles its template
    def warm() -> None:
        from gpuflow.convert import warm as warm_convert

        try:
            warm_convert()
        except Exception as exc:  # the real conversion reports real problems
            log.debug(f"convert warm-up failed: {exc}")

    threading.Thread(target=warm, name="convert-warm-up", daemon=True).start()


def _run_locked(resolved: cfgmod.Resolved, *, run_dir: Path, resume: bool, reconfigure: Any) -> RunResult:
    cfg = resolved.config
    _save_config(run_dir, resolved)
    codes: list[int] = []
    results: list[NotebookResult] = []
    slots: list[Slot] = []
    packed: dict[str, Packed] = {}
    pool: Pool[NotebookJob, NotebookResult] | None = None
    stopped: errors.Stopped | None = None
    error: str | None = None
    t0 = time.monotonic()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-repo")
    # one waiting pytest per notebook in flight (see flow.notebook.start_tests); packed, a GPU runs
    # as many as fit in its memory, so the bound is generous (threads start only as they are needed)
    testers = ThreadPoolExecutor(max_workers=max(1, cfg.jobs, len(cfg.gpus.split(",")), 64 if cfg.pack else 0),
                                 thread_name_prefix="early-tests")
    try:
        facts = _run_level(run_dir, PREFLIGHT, lambda: _preflight(cfg, run_dir))
        repo_dir = _run_level(run_dir, REPO, lambda: _notebook_repo(cfg, run_dir, resume))
        if reconfigure is not None and not cfg.repo_is_local:
            resolved = reconfigure(repo_dir)
            cfg = resolved.config
            _save_config(run_dir, resolved)
        if cfg.datasets:
            _run_level(run_dir, DATASETS, lambda: _datasets(cfg, repo_dir))
        slots = slots_for(suite.gpus_for(cfg, facts), cfg.jobs, facts.get("devices") or [],
                          default_gpu=default_device(facts))
        jobs = suite.select_jobs(cfg, expand_notebooks(cfg, repo_dir, run_dir), facts, slots, repo_dir)
        jobs, capacity = _packed(cfg, jobs, facts, slots)
        skipped = {i: skip_notebook(job, Slot(name="-")) for i, job in enumerate(jobs) if job.skip is not None}
        runnable = [i for i, job in enumerate(jobs) if job.skip is None]
        _warm_convert()
        test_base: Future[TestBase] | None = None
        if cfg.test_repo:
            test_base = executor.submit(_fetch_test_repo, cfg, run_dir)
        flow = Flow(config=cfg, run_dir=run_dir, resume=resume, repo=repo_dir, test_base=test_base,
                    background=executor, testers=testers)
        pool = Pool(slots=slots, work=lambda job, slot: run_notebook(flow, job, slot),
                    failed=lambda r: r.exit_code != 0, fail_fast=cfg.fail_fast, stop=flow.stop,
                    claim=lambda job: suite.claim(job, slots), capacity=capacity, again=suite.again)
        t0 = time.monotonic()
        pool.start([jobs[i] for i in runnable])
        try:
            while not pool.wait(0.2):
                pass
        except (errors.Stopped, KeyboardInterrupt) as exc:
            stopped = exc if isinstance(exc, errors.Stopped) else errors.Interrupted("interrupted", signum=2)
            log.warning(f"{stopped}: stopping the kernels, then writing the summaries")
            flow.stopped_by = stopped
            flow.stop.set()
            proc.signal_all(signal.SIGINT if isinstance(stopped, errors.Interrupted) else signal.SIGTERM)
            pool.wait(timeout=60)
        ran = {runnable[i]: r for i, r in pool.results.items()}
        results = [{**ran, **skipped}[i] for i in sorted({**ran, **skipped})]
        packed = suite.packed_report(jobs, results)
        not_run = [job.name for i, job in enumerate(jobs) if i not in ran and i not in skipped]
        if not_run:
            log.warning(f"not run ({'stopped' if stopped else '--fail-fast'}): {', '.join(not_run)}")
    except errors.Stopped as exc:  # stopped before any notebook started
        stopped = exc
    except Exception as exc:  # a once-per-run step failed (its record says so), or the notebooks named are wrong
        failed = errors.failure(exc)
        codes.append(failed.code)
        error = cli.fail_line("gpuflow.run", failed)
        if failed.traceback:
            log.error(failed.traceback)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        testers.shutdown(wait=False, cancel_futures=True)
    makespan = round(time.monotonic() - t0, 3)
    codes += [r.exit_code for r in results] + ([stopped.exit_code] if stopped else [])
    slot_report = run_report.slot_report(slots, pool, makespan, results, run_dir)
    result = RunResult(run_dir=run_dir, exit_code=errors.worst(codes), notebooks=results,
                       makespan_s=makespan, slots=slot_report, index_html=None, stopped=stopped, error=error,
                       packed=packed)
    return run_report.finish_run(result, cfg)


def _packed(cfg: cfgmod.FlowConfig, jobs: list[NotebookJob], facts: Mapping[str, Any],
            slots: list[Slot]) -> tuple[list[NotebookJob], dict[str, int]]:
    """With --pack, each packable notebook's GPU and share, and each GPU's
    capacity; without, the jobs as they are (one notebook per slot)."""
    if not cfg.pack:
        return jobs, {}
    devices = suite.devices_of(facts, slots)
    if not devices:
        log.warning("--pack: the preflight recorded no GPU memory; one notebook per GPU")
        return jobs, {}
    jobs, groups = suite.plan_jobs(cfg, jobs, devices)
    for group in groups:
        log.info(f"--pack: GPU {group.gpu}: {', '.join(p.name for p in group.notebooks)}")
    return jobs, {f"gpu{d.gpu}": d.capacity for d in devices}


def _run_level(run_dir: Path, step: Step[R], call: Callable[[], R]) -> R:
    """A once-per-run step, recorded under RUN_DIR/steps/; what it raises
    ends the run (a bug's traceback is logged where the run maps it)."""
    ran = harness.run(step, run_dir, call)
    if ran.error:
        log.error(f"{run_dir.name}: {ran.error}")
    return ran.result()


def _preflight(cfg: cfgmod.FlowConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """The run's one GPU check; with `run_dir`, its facts are kept there for
    every notebook's execute (`--gpu-facts`)."""
    from gpuflow.gpu import guard

    opts = guard.GuardOptions(gpu=cfg.gpu, rmm=cfg.rmm, rmm_pool_size=cfg.rmm_pool_size, lite=cfg.lite,
                              max_cells=cfg.max_cells, max_genes=cfg.max_genes, seed=cfg.seed)
    facts = dict(guard.preflight(opts))
    if run_dir is not None:
        guard.write_facts(facts, RunDir(run_dir).gpu_facts)
    return facts


def _notebook_repo(cfg: cfgmod.FlowConfig, run_dir: Path, resume: bool) -> Path:
    if cfg.repo_is_local:
        path = Path(cfg.repo).expanduser().resolve()
        if not path.is_dir():
            raise errors.InputError(f"notebook repo {cfg.repo} is not a directory")
        return path
    from gpuflow.clone import clone

    dest = RunDir(run_dir).notebook_repo
    if resume and (dest / ".git").is_dir():
        return dest  # the resumed run's checkout: the notebooks' bytes decide what is redone
    return Path(clone(cfg.repo, dest, revision=cfg.revision, backup=False, token_env=cfg.token_env).path)


def _datasets(cfg: cfgmod.FlowConfig, repo_dir: Path) -> list[dict[str, Any]]:
    from gpuflow.download import download

    got = []
    for item in cfg.datasets:
        res = download(item["url"], contained(repo_dir, item["dest"]), sha256=item.get("sha256"),
                       size=item.get("size"), cache_dir=Path(cfg.out) / ".cache", token_env=cfg.token_env)
        got.append({"dest": item["dest"], "bytes": res.bytes, "source": res.source})
    return got


def _fetch_test_repo(cfg: cfgmod.FlowConfig, run_dir: Path) -> TestBase:
    """Fetch the test repo and prepare its environment, once per run."""
    from gpuflow.stage import fetch_repo
    from gpuflow.test import python_for

    def prepare() -> TestBase:
        base = RunDir(run_dir).test_repo
        fetch_repo(cfg.test_repo, base, token_env=cfg.token_env)
        return TestBase(repo=base, python=python_for(base))

    return _run_level(run_dir, TEST_ENV, prepare)


def expand_notebooks(cfg: cfgmod.FlowConfig, repo_dir: Path, run_dir: Path) -> list[NotebookJob]:
    """Paths and globs, relative to the notebook repo, in the order given."""
    if not cfg.notebooks:
        raise errors.ConfigError("no notebooks: set `notebooks` or pass --notebooks")
    found: dict[Path, str] = {}
    for given in cfg.notebooks:
        pattern = _inside(repo_dir, given)
        if any(ch in pattern for ch in "*?["):
            contained(repo_dir, pattern.replace("*", "x").replace("?", "x").replace("[", "x"))
            # each match checked too: a symlink the glob found may point out of the repo
            matches = sorted(contained(repo_dir, p.relative_to(repo_dir)) for p in repo_dir.glob(pattern)
                             if p.is_file())
            if not matches:
                raise errors.InputError(f"notebook pattern {given!r} matches nothing in {repo_dir}")
        else:
            matches = [contained(repo_dir, _inside(repo_dir, pattern))]
            if not matches[0].is_file() and not pattern.endswith(".ipynb"):
                # a stem, as Tekton's Pipelines name notebooks: `01_intro` is `01_intro.ipynb`
                matches = [contained(repo_dir, _inside(repo_dir, pattern + ".ipynb"))]
            if not matches[0].is_file():
                raise errors.InputError(f"notebook {pattern!r} not found in {repo_dir}")
        for path in matches:
            rel = path.relative_to(repo_dir).as_posix()
            if not select.excluded(rel, cfg.exclude):
                found.setdefault(path, rel)
    if not found:
        raise errors.InputError(f"every notebook named is excluded by `exclude` ({', '.join(cfg.exclude)})")
    jobs, names = [], set()
    suffix = "_lite" if cfg.lite else ""
    for path, rel in found.items():
        name = path.stem + suffix
        if name in names:  # artifact dirs are named by stem, as the existing workflow names files
            raise errors.ConfigError(f"two notebooks share the name {path.stem!r}; rename one")
        names.add(name)
        jobs.append(NotebookJob(notebook=path, rel=rel, stem=path.stem, name=name, dir=run_dir / name))
    return jobs


def _inside(repo_dir: Path, pattern: str) -> str:
    """A notebook path or glob relative to the repo: `./x.ipynb` and absolute
    paths inside the repo are what a person types; outside it, one line."""
    if not Path(pattern).is_absolute():
        return Path(pattern).as_posix()
    for base in (repo_dir, repo_dir.resolve()):
        rel = os.path.relpath(pattern, base)
        if not rel.startswith(".."):
            return Path(rel).as_posix()
    raise errors.InputError(f"notebook {pattern!r} is outside the notebook repo {repo_dir}")


def new_run_dir(out: Path) -> Path:
    """OUT/<UTC timestamp>-<random>: two runs started in the same second never collide."""
    for _ in range(10):
        run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        try:
            (out / run_id).mkdir(parents=True)
            return out / run_id
        except FileExistsError:
            continue
    raise errors.InputError(f"cannot create a fresh run directory under {out}")


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    # flock, not a pid file: the kernel drops it when a crashed run dies, so
    # --resume after a crash never finds a stale lock
    # Every child holds it too, so after a crash it is free only once the
    # last orphan is gone; a resume waits a little for that before refusing.
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(RunDir(run_dir).lock, "a+") as fh:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise errors.UsageError(f"another gpuflow run is using {run_dir}") from None
                time.sleep(0.2)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        with proc.held_by_children(fh.fileno()):
            yield


def _save_config(run_dir: Path, resolved: cfgmod.Resolved) -> None:
    data = {"config": resolved.config.to_dict(), "sources": resolved.sources}
    # a token pasted into a repo URL must not land in the artifacts
    atomic_write_text(RunDir(run_dir).config_json, redact(json.dumps(data, indent=2)))


def plan(resolved: cfgmod.Resolved, devices_spec: str | None = None) -> dict[str, Any]:
    """`gpuflow run --plan`: the packing of the selected notebooks, one group
    per GPU, without running them. With `devices_spec` (`2x80GiB`) it plans
    for GPUs this machine does not have: Tekton's planning pod has none."""
    import tempfile

    from gpuflow.flow import pack

    cfg = resolved.config
    if devices_spec:
        try:
            devices = pack.parse_devices(devices_spec)
        except ValueError as exc:
            raise errors.UsageError(f"--plan-devices {exc}") from None
        facts: dict[str, Any] = {"visible": True, "devices": [
            {"index": int(d.gpu), "memory_mib": d.memory_bytes >> 20} for d in devices]}
    else:
        facts = _preflight(cfg)
    with tempfile.TemporaryDirectory(prefix="gpuflow-plan-") as scratch:
        repo_dir = _notebook_repo(cfg, Path(scratch), resume=False)
        slots = slots_for(suite.gpus_for(replace(cfg, pack=True), facts), cfg.jobs, facts.get("devices") or [])
        jobs = suite.select_jobs(cfg, expand_notebooks(cfg, repo_dir, Path(scratch)), facts, slots, repo_dir)
        jobs, groups = suite.plan_jobs(cfg, jobs, suite.devices_of(facts, slots))
        return suite.plan_json(jobs, groups)


def add_arguments(p: argparse.ArgumentParser) -> None:
    cfgmod.add_arguments(p)
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="rerun RUN_DIR: keep the steps whose inputs are unchanged, redo the rest")
    p.add_argument("--plan", action="store_true",
                   help="print how --pack would place the notebooks (JSON, one group per GPU), then exit")
    p.add_argument("--plan-devices", default=None, metavar="SPEC",
                   help="with --plan: the GPUs to plan for, e.g. 2x80GiB, on a machine without them "
                        "(default: the GPUs the preflight sees)")
    p.add_argument("--plan-results", type=Path, default=None, metavar="DIR",
                   help="with --plan: write the Tekton result `groups` into DIR, a JSON array with one "
                        "string per GPU: its notebooks, comma-separated (a Pipeline matrix takes it)")


def _resolve(args: argparse.Namespace, env: Mapping[str, str], repo_dir: Path | None = None) -> cfgmod.Resolved:
    saved = None
    if args.resume is not None:
        try:
            saved = json.loads(RunDir(args.resume).config_json.read_text(encoding="utf-8"))["config"]
        except (OSError, ValueError, KeyError):
            raise errors.InputError(f"--resume {args.resume}: no readable config.json there") from None
    values = cfgmod.cli_values(args)

    def resolve(config_file: Path | None = None, repo_file: Path | None = None) -> cfgmod.Resolved:
        return cfgmod.resolve(cli=values, env=env, config_file=config_file, repo_pyproject=repo_file, saved=saved,
                              saved_label=f"resume {args.resume}/{artifacts.CONFIG_JSON}",
                              trust_repo=args.trust_repo_config)

    # The file where the runner stands is the runner's own, unless it lies in
    # the notebook repo (named without it, or by it: your own folder of
    # notebooks is the repo); then it is the repo's, and limited as such.
    runner_file, repo_file = args.config, None
    here = cfgmod.find_config(Path.cwd()) if runner_file is None else None
    if here is not None:
        if _in_repo(here, resolve().config, repo_dir) or _in_repo(here, resolve(config_file=here).config, repo_dir):
            repo_file = here
        else:
            runner_file = here
    first = resolve(config_file=runner_file, repo_file=repo_file)
    if repo_dir is None and first.config.repo_is_local:
        repo_dir = Path(first.config.repo).expanduser()
    if repo_dir is None:
        return first  # a git URL: its own config is read once it is cloned (reconfigure)
    return resolve(config_file=runner_file, repo_file=cfgmod.find_config(repo_dir))


def _in_repo(path: Path, cfg: cfgmod.FlowConfig, repo_dir: Path | None) -> bool:
    repo = repo_dir if repo_dir is not None else Path(cfg.repo).expanduser() if cfg.repo_is_local else None
    return repo is not None and path.resolve().is_relative_to(repo.resolve())


def _call(args: argparse.Namespace) -> RunResult | None:
    env = os.environ
    for line in cfgmod.unknown_env(env):
        log.warning(line)
    resolved = _resolve(args, env)
    if resolved.config.token_env:  # before any child starts: each withholds and redacts it
        declare_secret(resolved.config.token_env)
    if args.print_config:
        print(redact(resolved.render()))
        return None
    if args.plan or args.plan_devices or args.plan_results:
        planned = plan(resolved, args.plan_devices)
        if args.plan_results is not None:
            fsutil.write_results(args.plan_results, {"groups": json.dumps(suite.matrix(planned))})
        print(json.dumps(planned, indent=2))
        return None
    run_dir = args.resume.resolve() if args.resume else new_run_dir(Path(resolved.config.out)).resolve()
    log.info(f"run directory: {run_dir}")
    result = run_flow(resolved, run_dir=run_dir, resume=args.resume is not None,
                      reconfigure=lambda repo: _resolve(args, env, repo))
    print(run_report.status_table(result))
    print(f"index.html: {result.index_html or '(none)'}")
    if result.stopped is not None:
        raise result.stopped
    return result


def _verdict(args: argparse.Namespace, result: RunResult | None) -> Verdict:
    if result is None:
        return Verdict()
    failed = [n for n in result.notebooks if n.exit_code != 0]
    error = result.error or ("gpuflow.run: " + "; ".join(str(n) for n in failed) if failed else None)
    return Verdict(exit_code=result.exit_code, error=error)


STEP = Step[RunResult | None](
    name="run", description="Run the whole notebook CI flow: execute, convert, stage, test, summary.",
    add_arguments=add_arguments, call=_call, verdict=_verdict,
    details=lambda result: {"run_dir": str(result.run_dir)} if result is not None else {},
    # each notebook's steps and the once-per-run steps are recorded; the run is run.json
    record_dir=lambda a: None,
)


def main(argv: Sequence[str] | None = None) -> int:
    return STEP.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
