"""Every exit code execute produces, with real ipykernel kernels."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from gpuflow import execute
from gpuflow.core import errors
from gpuflow.core.artifacts import notebook_name
from gpuflow.notebook import prepare
from tests.execute.conftest import ROOT, MakeNotebook, last_line, read

PID_CELL = "import os, pathlib, time\npathlib.Path({pidfile!r}).write_text(str(os.getpid()))\ntime.sleep(60)"


def banners(nb: object) -> list[str]:
    return [c.source for c in nb.cells if prepare.ERROR_MARKER_TAG in c.metadata.get("tags", [])]  # type: ignore[attr-defined]


def record(out: Path) -> dict:
    # named after the notebook: the output's folder may hold several notebooks
    return json.loads((out.parent / "steps" / f"{notebook_name(out)}.execute.json").read_text())


def test_success_with_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hello" / "hello_params_output.ipynb"
    code = execute.main([str(ROOT / "notebooks" / "hello_params.ipynb"), str(out), "-p", "name", "ci",
                         "-p", "repeat", "3", "--log-level", "INFO"])
    stdout, err = capsys.readouterr()
    assert code == 0 and stdout.strip() == str(out)
    nb = read(out)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.tags]
    assert len(injected) == 1 and 'name = "ci"' in injected[0].source and "repeat = 3" in injected[0].source
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "HELLO name=ci\n" in text and "SQUARES [0, 1, 4, 9]\n" in text and "DONE hello_params\n" in text
    assert not banners(nb) and nb.metadata.papermill.parameters == {"name": "ci", "repeat": 3}
    log_text = (out.parent / f"{notebook_name(out)}.papermill.log").read_text()
    assert "Executing Cell 1---" in log_text and "HELLO name=ci" in log_text
    assert "HELLO name=ci" in err  # tee: the log is on stderr too
    assert record(out)["exit_code"] == 0 and record(out)["details"]["executed_cells"] == 4  # the notebook's own 4 cells


def test_cell_error_is_exit_1_with_papermill_banner(
    make_notebook: MakeNotebook, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_notebook("print('first')", "adata = {}\nadata['pca']", "print('never')")
    out = tmp_path / "err" / "out.ipynb"
    assert execute.main([str(src), str(out), "--no-progress-bar"]) == 1
    err = capsys.readouterr().err
    assert last_line(err) == f"gpuflow.execute: cell 2 (In [2]) raised KeyError: 'pca' (see {out})"
    assert "Traceback" not in err.split("Ending Cell 2")[-1]
    nb = read(out)
    assert "An Exception was encountered" in nb.cells[0].source and "papermill-error-cell" in nb.cells[2].source
    assert nb.cells[1].outputs[0].text == "first\n"
    assert nb.cells[3].outputs[0].ename == "KeyError" and nb.cells[4].execution_count is None
    assert record(out)["details"]["failed_cell"] == 1


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(["--cell-timeout", "1.5"], "cell 2 (In [2]) timed out after 1.5s"),
     (["--timeout", "3", "--cell-timeout", "30"], "notebook timed out after 3s in cell 2 (In [2])")],
    ids=["cell", "notebook"],
)
def test_timeouts_are_exit_124_with_a_banner(
    make_notebook: MakeNotebook, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    flags: list[str], expected: str,
) -> None:
    src = make_notebook("print('first')", "import time\ntime.sleep(60)", "print('never')")
    out = tmp_path / "slow" / "out.ipynb"
    t0 = time.monotonic()
    assert execute.main([str(src), str(out), "--no-progress-bar", *flags]) == 124
    assert time.monotonic() - t0 < 30
    assert last_line(capsys.readouterr().err) == f"gpuflow.execute: {expected} (see {out})"
    nb = read(out)
    assert len(banners(nb)) == 2 and "timed out" in banners(nb)[0] and "interrupted" in banners(nb)[1]
    assert nb.cells[1].outputs[0].text == "first\n" and nb.cells[3].metadata.papermill.status == "failed"


def test_kernel_death_is_exit_137_and_never_hangs(
    make_notebook: MakeNotebook, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_notebook("print('first')", "import os\nos.kill(os.getpid(), 9)", "print('never')")
    out = tmp_path / "dead" / "out.ipynb"
    assert execute.main([str(src), str(out), "--no-progress-bar"]) == 137
    line = last_line(capsys.readouterr().err)
    # "(In [2])" only when the kernel announced the cell before it died
    assert re.fullmatch(rf"gpuflow.execute: kernel died in cell 2( \(In \[2\]\))?: killed by SIGKILL "
                        rf"\(out of memory\?\) \(see {re.escape(str(out))}\)", line), line
    nb = read(out)
    assert "the kernel died: killed by SIGKILL" in banners(nb)[0]
    assert nb.cells[1].outputs[0].text == "first\n" and banners(nb)[1] == nb.cells[2].source


def _sigterm_when_running(pidfile: Path, target: int, sig: int = signal.SIGTERM) -> threading.Thread:
    def send() -> None:
        deadline = time.monotonic() + 60
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(target, sig)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _terminated_line(line: str, out: Path, how: str = "terminated by SIGTERM") -> bool:
    pattern = rf"gpuflow.execute: {how} in cell 2( \(In \[2\]\))? \(see {re.escape(str(out))}\)"
    return re.fullmatch(pattern, line) is not None


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(("sig", "code", "how"), [(signal.SIGTERM, 143, "terminated by SIGTERM"),
                                                  (signal.SIGINT, 130, "interrupted by SIGINT")])
def test_signal_in_process_saves_and_kills_the_kernel(
    make_notebook: MakeNotebook, tmp_path: Path, capsys: pytest.CaptureFixture[str], sig: int, code: int, how: str
) -> None:
    pidfile = tmp_path / "kernel.pid"
    src = make_notebook("print('first')", PID_CELL.format(pidfile=str(pidfile)))
    out = tmp_path / "term" / "out.ipynb"
    _sigterm_when_running(pidfile, os.getpid(), sig)
    assert execute.main([str(src), str(out), "--no-progress-bar"]) == code
    assert _terminated_line(last_line(capsys.readouterr().err), out, how)
    assert _gone(int(pidfile.read_text()))
    nb = read(out)
    assert how in banners(nb)[0] and nb.cells[1].outputs[0].text == "first\n"


def test_sigterm_to_the_cli_process_saves_and_leaves_no_kernel(make_notebook: MakeNotebook, tmp_path: Path) -> None:
    pidfile = tmp_path / "kernel.pid"
    src = make_notebook("print('first')", PID_CELL.format(pidfile=str(pidfile)), "print('never')")
    out = tmp_path / "cli" / "out.ipynb"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "gpuflow.execute", str(src), str(out), "--no-progress-bar",
                              "--gpu", "off", "--rmm", "off"],  # no guard cell: see conftest
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _sigterm_when_running(pidfile, child.pid)
    stdout, err = child.communicate(timeout=90)
    assert child.returncode == 143, err
    assert _terminated_line(last_line(err), out)
    assert stdout == "" and _gone(int(pidfile.read_text()))
    nb = read(out)
    assert nb.cells[1].outputs[0].text == "first\n" and len(banners(nb)) == 2
    assert record(out)["exit_code"] == 143


def test_kernel_env_library_call(make_notebook: MakeNotebook, tmp_path: Path) -> None:
    src = make_notebook("import os\nprint(os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('MY_TOKEN'),"
                        " os.environ.get('PASSED_TOKEN'), os.getcwd())")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3", "MY_TOKEN": "hide-me", "PASSED_TOKEN": "shown"}
    result = execute.execute_notebook(src, tmp_path / "env" / "out.ipynb", env=env, pass_env=["PASSED_TOKEN"],
                                      cwd=work, progress_bar=False, log_level="INFO")
    assert result.status == "success" and result.exit_code == 0 and result.executed_cells == 1
    assert read(result.output).cells[0].outputs[0].text == f"3 None shown {work}\n"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ or os.environ["CUDA_VISIBLE_DEVICES"] != "3"
    assert "MY_TOKEN" in result.log.read_text()  # named as withheld, never its value
    assert "hide-me" not in result.log.read_text()


def test_library_raises_after_saving(make_notebook: MakeNotebook, tmp_path: Path) -> None:
    src = make_notebook("raise ValueError('boom')")
    with pytest.raises(errors.CellError) as info:
        execute.execute_notebook(src, tmp_path / "lib" / "out.ipynb", progress_bar=False, log_level="WARNING")
    result = info.value.result  # type: ignore[attr-defined]
    assert (result.status, result.exit_code, result.failed_cell) == ("failed", 1, 0)
    assert result.output.exists() and info.value.details["error"].startswith("cell 1 (In [1]) raised ValueError")  # type: ignore[attr-defined]


def test_concurrent_runs_in_threads_keep_their_own_env(make_notebook: MakeNotebook, tmp_path: Path) -> None:
    src = make_notebook("import os, time\ntime.sleep(0.5)\nprint(os.environ['CUDA_VISIBLE_DEVICES'])")
    seen: dict[int, str] = {}

    def run(gpu: int) -> None:
        result = execute.execute_notebook(src, tmp_path / f"gpu{gpu}" / "out.ipynb", progress_bar=False,
                                          env={**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}, log_level="INFO")
        seen[gpu] = read(result.output).cells[0].outputs[0].text
        assert f"{gpu}\n" in result.log.read_text() and f"{1 - gpu}\n" not in result.log.read_text()

    threads = [threading.Thread(target=run, args=(gpu,)) for gpu in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert seen == {0: "0\n", 1: "1\n"}
