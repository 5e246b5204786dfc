"""The kernel side of `gpuflow.execute`: papermill's client and bookkeeping
over one kernel, with atomic throttled saves, timeouts, a dead kernel and
signals all turned into a `Stop` that says why and where execution ended."""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from gpuflow.core import errors
from gpuflow.core.fsutil import atomic_write_text
from gpuflow.notebook import kernel as _kernel
from gpuflow.notebook.nblog import FILE_ONLY

STARTUP_TIMEOUT = 120.0  # seconds; generous: CI machines are busy and CUDA imports are slow
IOPUB_TIMEOUT = 30  # seconds to wait for a finished cell's last output
SAVE_EVERY = 5.0  # seconds between progress saves: papermill saves after every cell (quadratic)


@dataclass(frozen=True, kw_only=True)
class Stop:
    """Why execution stopped early, and where (`cell`: index in the executed
    notebook). The one-line message is put together at the end, once the
    place is known (`message`): "cell 3 (In [4]) timed out after 5s",
    "kernel died in cell 3: killed by signal 9"."""

    exc: type[errors.GpuflowError] | type[errors.Stopped]
    what: str  # what happened: "raised KeyError: 'pca'", "kernel died"
    cell: int | None
    banner: str  # the notebook's banner text; empty: papermill's own
    place_first: bool = False  # "<place> <what>" rather than "<what> in <place>"
    cause: str = ""  # after the place: ": killed by signal 9"

    def message(self, where: str) -> str:
        """The one line, with `where` (empty when there is no cell to name)."""
        if not where:
            text = self.what
        elif self.place_first:
            text = f"{where} {self.what}"
        else:
            text = f"{self.what} in {where}"
        return f"{text}: {self.cause}" if self.cause else text


@dataclass
class State:
    km: Any = None
    started: bool = False
    current: int | None = None
    limit: str = "cell"  # which limit applies to the running cell: "cell" | "notebook"
    stopped_by: int | None = None  # signal number

def manager(nb: Any, output_path: Path, logger: Any, bar: Any) -> Any:
    from papermill.engines import NotebookExecutionManager

    class Manager(NotebookExecutionManager):  # type: ignore[misc]
        """papermill's bookkeeping, with atomic saves at most every few seconds."""

        every = SAVE_EVERY
        last_save_time: Any  # set by papermill's manager

        def save(self, **kwargs: Any) -> None:
            if (self.now() - self.last_save_time).total_seconds() >= self.every:
                took = time.monotonic()
                write_notebook(self.nb, output_path)
                self.every = max(SAVE_EVERY, 4 * (time.monotonic() - took))
                self.last_save_time = self.now()

        def cell_start(self, cell: Any, cell_index: int | None = None, **kwargs: Any) -> None:
            logger.info(f"Executing Cell {(cell_index or 0) + 1:-<40}", extra=FILE_ONLY)
            super().cell_start(cell, cell_index, **kwargs)

        def cell_complete(self, cell: Any, cell_index: int | None = None, **kwargs: Any) -> None:
            logger.info(f"Ending Cell {(cell_index or 0) + 1:-<43}", extra=FILE_ONLY)
            super().cell_complete(cell, cell_index, **kwargs)

    manager = Manager(nb, output_path=str(output_path), log_output=False, progress_bar=bar or False)
    return manager


def _client_class(guard_fallback: str | None, before_cells: Callable[[], object] | None) -> Any:
    from nbclient.exceptions import CellExecutionError
    from papermill.clientwrap import PapermillNotebookClient

    from gpuflow.notebook.prepare import GUARD_TAG

    class Client(PapermillNotebookClient):  # type: ignore[misc]
        """papermill's client, which runs the GPU guard cell first and outside
        the kernel's history: it takes no `In [n]`, so every count equals
        papermill's, and it runs before injected parameters wherever they are."""

        def papermill_execute_cells(self) -> None:
            if before_cells is not None:  # the kernel is up; no cell has run
                before_cells()
            guards = [i for i, c in enumerate(self.nb.cells) if GUARD_TAG in c.metadata.get("tags", [])]
            for index in guards + [i for i in range(len(self.nb.cells)) if i not in guards]:
                cell, is_guard = self.nb.cells[index], index in guards
                try:
                    self.nb_man.cell_start(cell, index)
                    self._run(cell, index, is_guard)
                except CellExecutionError as ex:
                    self.nb_man.cell_exception(self.nb.cells[index], cell_index=index, exception=ex)
                    break
                finally:
                    self.nb_man.cell_complete(self.nb.cells[index], cell_index=index)

        def _run(self, cell: Any, index: int, is_guard: bool) -> None:
            if not is_guard:
                self.execute_cell(cell, index)
                return
            try:
                self.execute_cell(cell, index, store_history=False)
            except CellExecutionError:
                # the short cell imports gpuflow in the kernel; a kernel without
                # it gets the guard's own source embedded instead
                names = {o.get("ename") for o in cell.get("outputs", []) if o.get("output_type") == "error"}
                if guard_fallback is None or not names & {"ImportError", "ModuleNotFoundError"}:
                    raise
                cell.source, cell.outputs = guard_fallback, []
                self.execute_cell(cell, index, store_history=False)
            finally:
                cell.execution_count = None  # outside the history: no In [n]

    return Client


def run_cells(
    nb_man: Any, name: str, env: dict[str, str], cwd: Path | None,
    cell_timeout: float | None, timeout: float | None, logger: Any, guard_fallback: str | None = None,
    before_cells: Callable[[], object] | None = None,
) -> Stop | None:
    """Run the kernel over the notebook; return why it stopped early, if it did.
    `guard_fallback` is the GPU guard cell's source for a kernel that cannot
    import gpuflow. `before_cells` runs once the kernel is up, before any cell
    (the GPU preflight settles there); what it raises ends the run."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    client_class = _client_class(guard_fallback, before_cells)

    state = State()
    deadline = time.monotonic() + timeout if timeout else None

    def on_cell_start(cell: Any, cell_index: int) -> None:
        state.current = cell_index
        if deadline is not None and time.monotonic() >= deadline:
            raise errors.NotebookTimeout("deadline passed between cells")

    def timeout_func(cell: Any) -> float | None:
        left = deadline - time.monotonic() if deadline is not None else None
        state.limit = "notebook" if left is not None and (cell_timeout is None or left < cell_timeout) else "cell"
        limit = left if state.limit == "notebook" else cell_timeout
        return None if limit is None else max(limit, 0.01)

    def on_started(notebook: Any) -> None:
        state.started = True

    # the handler covers the kernel's shutdown too: a second signal there must not
    # leave a kernel behind
    with _signals_kill(state):
        for attempt in (1, 2):
            state.km = _kernel.new_manager(name)
            client = client_class(
                nb_man, km=state.km, kernel_name=name, startup_timeout=STARTUP_TIMEOUT, log=logger,
                log_output=True, timeout_func=timeout_func, iopub_timeout=IOPUB_TIMEOUT,
                on_cell_start=on_cell_start, on_notebook_start=on_started,
            )
            stop: Stop | None = None
            try:
                client.execute(env=env, cwd=str(cwd) if cwd else None)
            except errors.NotebookTimeout:
                stop = _timeout_stop(state, timeout, cell_timeout, between_cells=True)
            except CellTimeoutError:
                stop = _timeout_stop(state, timeout, cell_timeout)
            except DeadKernelError:
                stop = _death_stop(state)
            except (RuntimeError, TimeoutError, OSError) as exc:
                if state.started or state.stopped_by:
                    stop = _death_stop(state) if not state.stopped_by else _signal_stop(state)
                elif attempt == 1:
                    logger.warning(f"kernel {name} did not start ({exc}); retrying once")
                    continue
                else:
                    stop = Stop(exc=errors.KernelDied, what=f"kernel {name} did not start", cause=str(exc),
                                cell=None, banner=f"The kernel {name} did not start: {exc}")
            finally:
                if client.kc is not None:
                    client.kc.stop_channels()
                _kernel.shutdown(state.km, interrupt=stop is not None and stop.exc is not errors.KernelDied)
                _kernel.cancel_pending_tasks()
            if state.stopped_by and (stop is None or stop.exc is errors.KernelDied):
                stop = _signal_stop(state)
            return stop
        return None


def _timeout_stop(state: State, timeout: float | None, cell_timeout: float | None,
                  between_cells: bool = False) -> Stop:
    if between_cells or state.limit == "notebook":
        what = f"notebook timed out after {timeout:g}s"
        return Stop(exc=errors.NotebookTimeout, what=what, cell=state.current,
                    banner=f"the {what} (--timeout); the kernel was interrupted and shut down")
    what = f"timed out after {cell_timeout:g}s"
    return Stop(exc=errors.CellTimeout, what=what, place_first=True, cell=state.current,
                banner=f"this cell {what} (--cell-timeout); the kernel was interrupted and shut down")


def _death_stop(state: State) -> Stop:
    why = _kernel.describe_death(_kernel.exit_status(state.km))
    return Stop(exc=errors.KernelDied, what="kernel died", cause=why, cell=state.current,
                banner=f"the kernel died: {why}")


def _signal_stop(state: State) -> Stop:
    exc = _stopped(state.stopped_by or signal.SIGTERM)
    return Stop(exc=type(exc), what=str(exc), cell=state.current, banner=f"{exc}; the kernel was shut down")


def _stopped(signum: int) -> errors.Stopped:
    if signum == signal.SIGINT:
        return errors.Interrupted("interrupted by SIGINT", signum=signum)
    return errors.Terminated(f"terminated by {signal.Signals(signum).name}", signum=signum)


@contextmanager
def _signals_kill(state: State) -> Iterator[None]:
    """SIGTERM/SIGINT kill the kernel; nbclient then sees a dead kernel within
    a second and the run unwinds normally, saving the notebook. Raising from
    the handler instead could land inside one of nbclient's polling tasks and
    be swallowed there. Before the kernel exists, the handler raises."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread gets signals; `gpuflow run` stops threads itself
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        state.stopped_by = signum
        if not _kernel.kill_now(state.km):
            raise _stopped(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def write_notebook(nb: Any, path: Path) -> None:
    import nbformat

    atomic_write_text(path, nbformat.writes(nb))


