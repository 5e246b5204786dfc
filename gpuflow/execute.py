"""Execute a notebook with papermill, in-process, so that every way it can
fail is reported with one line and its own exit code, the partial output
notebook is always saved, and nothing hangs or outlives the step.

By default this is `papermill IN OUT --log-output --log-level DEBUG
--progress-bar --report-mode --kernel python3 2>&1 | tee papermill.log`,
with the right exit code (see docs/execute.md for the table).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gpuflow.core import errors, tables
from gpuflow.core.artifacts import ArtifactDir, notebook_name
from gpuflow.core.log import log, strip_ansi
from gpuflow.core.step import Step
from gpuflow.gpu import guard as _guard
from gpuflow.notebook import engine, prepare
from gpuflow.notebook import kernel as _kernel
from gpuflow.notebook.nblog import run_logger
from gpuflow.notebook.params import parameters_from_args


@dataclass(frozen=True, kw_only=True)
class ExecuteResult:
    input: Path
    output: Path
    log: Path
    status: str  # "success" | "failed"
    exit_code: int
    cells: int  # the user's code cells: the input notebook's, none that gpuflow or papermill injected
    executed_cells: int
    failed_cell: int | None = None  # index into the INPUT notebook's cells, from 0 (told as "cell <index + 1>")
    error: str | None = None
    duration_s: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)
    prepared: str = "unchanged"

    def __str__(self) -> str:
        return f"{self.output}: {self.status}, {self.executed_cells} cells executed in {self.duration_s:.1f}s"

    def _repr_html_(self) -> str:
        return tables.dataclass_table(self)

    def details(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def execute_notebook(
    input_path: Path,
    output_path: Path,
    *,
    parameters: Mapping[str, Any] | None = None,
    kernel: str | None = "python3",
    cwd: Path | None = None,
    cell_timeout: float | None = None,
    timeout: float | None = None,
    report_mode: bool = True,
    log_path: Path | None = None,
    log_level: str = "DEBUG",
    progress_bar: bool = True,
    guard: _guard.GuardOptions | None = None,
    env: Mapping[str, str] | None = None,
    pass_env: Sequence[str] = (),
    prepare_only: bool = False,
    gpu_facts: Mapping[str, Any] | None = None,
) -> ExecuteResult:
    """Prepare and execute `input_path` into `output_path` (see module doc).

    Raises CellError, CellTimeout, NotebookTimeout, KernelDied, Terminated or
    InputError after saving the output notebook; the exception carries
    `.result` (the ExecuteResult) and `.details` (for the step record).
    """
    t0 = time.monotonic()
    input_path, output_path = Path(input_path), Path(output_path)
    # named after the notebook: several notebooks may be executed into one folder
    log_path = Path(log_path) if log_path else ArtifactDir(output_path.parent).notebook_log(notebook_name(output_path))
    if prepare.same_file(input_path, output_path):
        raise errors.InputError(f"output {output_path} is the input notebook; it is never overwritten")
    _check_options(cwd, cell_timeout, timeout)
    nb = prepare.load_notebook(input_path)
    name = prepare.kernel_name(nb, kernel)
    prepare.check_writable(output_path.parent)
    prepare.check_writable(log_path.parent)
    if not prepare_only:
        prepare.check_kernel(name)
    origin = {cell.get("id"): i for i, cell in enumerate(nb.cells)}
    opts = guard or _guard.GuardOptions()
    # the driver probe (about 0.3 s of cuInit on a fresh pod) runs while the
    # kernel starts; the check settles before the first cell
    preflight = _guard.start_preflight(opts, known=gpu_facts) if not prepare_only else None
    facts = preflight.facts if preflight is not None else {}
    cell_stats = _guard.cell_stats_path(opts, facts)
    guard_source = _guard.setup_cell_source(opts, facts, cell_stats)
    report = prepare.prepare(nb, guard_source=guard_source, report_mode=report_mode)
    # what the engine runs instead when the kernel cannot import gpuflow
    guard_fallback = _guard.setup_cell_source(opts, facts, cell_stats, embed=True) if guard_source else None
    params = dict(parameters or {})
    nb = _papermill_metadata(nb, params, input_path, output_path, name, report_mode)
    base = ExecuteResult(
        input=input_path, output=output_path, log=log_path, status="success", exit_code=0,
        cells=_user_code_cells(nb, origin), executed_cells=0, parameters=params, prepared=report.summary(),
    )
    if prepare_only:
        log.info(f"prepared (not executed): {report.summary()}")
        engine.write_notebook(nb, output_path)
        return replace(base, duration_s=round(time.monotonic() - t0, 3))
    kernel_env = _kernel.kernel_env(env, pass_env)
    # the step folds the long kernel log on GitHub Actions; bad input never gets here
    with log.step(f"execute {input_path.name}"), run_logger(log_path, log_level, progress_bar) as (logger, bar):
        logger.info(f"Input Notebook:  {input_path}\nOutput Notebook: {output_path}")
        logger.info(f"Preparation: {report.summary()}")
        hidden = _kernel.withheld(env, pass_env)
        if hidden:
            logger.info(f"Kept from the kernel (look like secrets; --pass-env NAME passes one): {', '.join(hidden)}")
        stop: engine.Stop | None = None
        nb_man = engine.manager(nb, output_path, logger, bar)
        try:  # whatever happens, what ran is saved
            nb_man.notebook_start()
            try:
                with _guard.telemetry(opts, ArtifactDir(output_path.parent).telemetry, cell_stats, nb):
                    stop = engine.run_cells(nb_man, name, kernel_env, cwd, cell_timeout, timeout, logger,
                                            guard_fallback=guard_fallback,
                                            before_cells=preflight.settle if preflight is not None else None)
            except errors.Stopped as exc:  # a signal before the kernel was up
                stop = engine.Stop(exc=type(exc), what=str(exc), cell=None, banner=str(exc))
            finally:
                nb_man.cleanup_pbar()
                nb_man.notebook_complete()
                guard_record = _guard.finalize_notebook(nb)
                if guard_record:
                    logger.info(_guard.describe(guard_record))
            stop = stop or _cell_error(nb)
            if stop is not None:
                stop = _add_banner(nb, stop)
        finally:
            engine.write_notebook(nb, output_path)
        result = replace(base, executed_cells=_executed(nb, origin), duration_s=round(time.monotonic() - t0, 3))
        if stop is not None:
            _raise_for(stop, nb, origin, result)  # inside the step, so that it reads "failed"
    return result


def _raise_for(stop: engine.Stop, nb: Any, origin: dict[Any, int], result: ExecuteResult) -> None:
    """Raise the stop's exception with its one-line message and the result."""
    failed = _input_index(nb, stop.cell, origin)
    message = f"{stop.message(_where(nb, stop.cell, failed))} (see {result.output})"
    result = replace(result, status="failed", exit_code=stop.exc.exit_code, failed_cell=failed, error=message)
    raise stop.exc(message, details=result.details(), result=result)


def _check_options(cwd: Path | None, cell_timeout: float | None, timeout: float | None) -> None:
    if cwd is not None and not Path(cwd).is_dir():
        raise errors.InputError(f"--cwd {cwd} is not a directory")
    for flag, value in (("--cell-timeout", cell_timeout), ("--timeout", timeout)):
        if value is not None and value <= 0:
            raise errors.UsageError(f"{flag} must be a positive number of seconds, not {value:g}")


def _papermill_metadata(
    nb: Any, params: dict[str, Any], input_path: Path, output_path: Path, name: str, report_mode: bool
) -> Any:
    from papermill import __version__ as pm_version
    from papermill.execute import prepare_notebook_metadata, remove_error_markers
    from papermill.parameterize import parameterize_notebook

    # what papermill's load_notebook_node adds, so its functions find their keys
    nb.metadata.setdefault("papermill", {"default_parameters": {}, "parameters": {},
                                         "environment_variables": {}, "version": pm_version})
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
        cell.metadata.setdefault("papermill", {})
    if params:
        nb = parameterize_notebook(nb, params, report_mode, kernel_name=name)
    nb = prepare_notebook_metadata(nb, str(input_path), str(output_path), report_mode)
    return remove_error_markers(nb)

def _cell_error(nb: Any) -> engine.Stop | None:
    """The first cell error output, as papermill's raise_for_execution_errors finds it."""
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") != "error":
                continue
            if out.get("ename") == "SystemExit" and out.get("evalue") in ("", "0"):
                continue
            what = f"raised {out.get('ename')}: {_plain(out.get('evalue', ''))}"
            return engine.Stop(exc=errors.CellError, what=what, place_first=True, cell=index, banner="")
        if cell.get("metadata", {}).get("papermill", {}).get("exception"):
            # the kernel's execute reply said "error" with no error output (an
            # unknown line magic writes a UsageError to stderr): a failed cell all the same
            said = next((_plain("".join(out.get("text", ""))) for out in cell.get("outputs", [])
                         if out.get("output_type") == "stream" and out.get("name") == "stderr"), "")
            what = f"failed: {said}" if said else "failed (the kernel reported an error)"
            return engine.Stop(exc=errors.CellError, what=what, place_first=True, cell=index, banner="")
    return None


def _plain(text: str) -> str:
    return strip_ansi(text).strip().splitlines()[0] if text.strip() else ""


def _add_banner(nb: Any, stop: engine.Stop) -> engine.Stop:
    """papermill's error banner: a red line at the top linking to an anchor
    cell before the failing cell. Timeouts and dead kernels get the same kind
    of banner, saying why execution stopped (papermill gives none). Returns
    the stop with the failing cell's index in the saved notebook."""
    import nbformat
    from papermill.execute import ERROR_ANCHOR_MSG, ERROR_MARKER_TAG, ERROR_MESSAGE_TEMPLATE, ERROR_STYLE

    count = nb.cells[stop.cell].get("execution_count") if stop.cell is not None else None
    count = " " if count is None else count
    if stop.banner:
        text = f"Execution stopped at '<a href=\"#papermill-error-cell\">In [{count}]</a>': {stop.banner}"
        top = f"<span {ERROR_STYLE}>{text}</span>"
        anchor = f'<span id="papermill-error-cell" {ERROR_STYLE}>Execution stopped here: {stop.banner}</span>'
    else:
        top, anchor = ERROR_MESSAGE_TEMPLATE % str(count), ERROR_ANCHOR_MSG
    if stop.cell is not None:
        failed = nb.cells[stop.cell]
        failed.metadata.setdefault("papermill", {}).update(exception=True, status="failed")
        nb.metadata.papermill["exception"] = True
        nb.cells.insert(stop.cell, _marker(nbformat, anchor, ERROR_MARKER_TAG))
    nb.cells.insert(0, _marker(nbformat, top, ERROR_MARKER_TAG))
    return replace(stop, cell=stop.cell + 2) if stop.cell is not None else stop


def _marker(nbformat: Any, text: str, tag: str) -> Any:
    cell = nbformat.v4.new_markdown_cell(text)
    cell.metadata["tags"] = [tag]
    return cell


def _input_index(nb: Any, cell: int | None, origin: dict[Any, int]) -> int | None:
    return origin.get(nb.cells[cell].get("id")) if cell is not None else None


def _where(nb: Any, cell: int | None, failed: int | None) -> str:
    """Where execution stopped, as the user counts: "cell 3 (In [3])" is the
    third cell of their notebook, and In [n] is what papermill shows for it."""
    if cell is None:
        return ""
    tags = nb.cells[cell].metadata.get("tags", [])
    count = _papermill_count(nb, cell)
    label = f" (In [{count}])" if count is not None else ""
    if failed is not None:
        return f"cell {failed + 1}{label}"
    if "injected-parameters" in tags:
        return f"the injected parameters cell{label}"
    return f"the GPU guard cell{label}" if prepare.GUARD_TAG in tags else f"an injected cell{label}"


def _papermill_count(nb: Any, cell: int) -> int | None:
    """The cell's execution count less those taken by gpuflow's injected cells
    before it (found by their tag, wherever they sit and whether or not they
    ran in the kernel's history): papermill, which injects none, shows this."""
    count = nb.cells[cell].get("execution_count")
    if count is None:
        return None
    ours = sum(1 for c in nb.cells[:cell] if prepare.GUARD_TAG in c.metadata.get("tags", [])
               and c.get("execution_count") is not None)
    return int(count) - ours


def _user_code_cells(nb: Any, origin: dict[Any, int]) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code" and c.get("id") in origin)


def _executed(nb: Any, origin: dict[Any, int]) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code" and c.get("id") in origin
               and c.get("execution_count") is not None)



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="notebook to execute (never modified)")
    p.add_argument("output", type=Path, help="executed notebook to write (partial on failure)")
    g = p.add_argument_group("parameters (papermill-style; later sources win: -f, -y, -p)")
    # --parameters: papermill's spelling, kept so its command lines work unchanged
    g.add_argument("-p", "--parameter", "--parameters", dest="parameters", nargs=2, action="append",
                   metavar=("NAME", "VALUE"), default=[],
                   help="a parameter (repeat for more); VALUE becomes bool/None/int/float when it reads as one")
    g.add_argument("-y", "--parameters-yaml", action="append", metavar="YAML", default=[],
                   help="parameters as a YAML mapping")
    g.add_argument("-f", "--parameters-file", action="append", type=Path, metavar="FILE", default=[],
                   help="parameters from a YAML file holding a mapping")
    e = p.add_argument_group("execution")
    e.add_argument("--kernel", default="python3", help="kernel name (default: python3; '': the notebook's, "
                   "else one for its language)")
    e.add_argument("--cwd", type=Path, default=None, help="the kernel's working directory (default: this one)")
    e.add_argument("--cell-timeout", type=float, default=None, metavar="S", help="seconds one cell may run")
    e.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds the whole notebook may run; then interrupt, shut down, save, exit 124")
    e.add_argument("--no-report-mode", dest="report_mode", action="store_false",
                   help="show code inputs in the output (default hides them, like --report-mode)")
    e.add_argument("--log", type=Path, default=None, metavar="FILE",
                   help="papermill log, also echoed to stderr (default: papermill.log in --record-dir, "
                   "else <name>.papermill.log beside OUTPUT <name>_output.ipynb)")
    e.add_argument("--log-level", default="DEBUG", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    e.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    e.add_argument("--prepare-only", action="store_true",
                   help="write the prepared notebook to OUTPUT and exit without starting a kernel")
    e.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                   help="give the kernel this variable although its name looks like a secret (repeat for more)")
    _guard.add_arguments(p)


def _call(args: argparse.Namespace) -> ExecuteResult:
    return execute_notebook(
        args.input, args.output, parameters=parameters_from_args(args),
        kernel=args.kernel or None, cwd=args.cwd, cell_timeout=args.cell_timeout,
        timeout=args.timeout, report_mode=args.report_mode,
        log_path=args.log or (ArtifactDir(args.record_dir).papermill_log if args.record_dir else None),
        log_level=args.log_level, progress_bar=args.progress_bar and log.format != "json",
        guard=_guard.options_from_args(args), pass_env=args.pass_env,
        prepare_only=args.prepare_only, gpu_facts=_guard.read_facts(args.gpu_facts),
    )


STEP = Step(
    name="execute", description="Execute a notebook with papermill; every failure has its exit code.",
    add_arguments=add_arguments, call=_call, details=ExecuteResult.details, stdout=lambda result: result.output,
    record_dir=lambda a: a.record_dir or Path(a.output).parent,
    # --record-dir is this notebook's own dir (gpuflow run, Tekton); the output's
    # folder may hold several notebooks, so there the record is named after it
    record_notebook=lambda a: None if a.record_dir else notebook_name(a.output),
)


def main(argv: Sequence[str] | None = None) -> int:
    return STEP.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
