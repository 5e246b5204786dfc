"""Faults injected into real processes; see the table in docs/reliability.md."""
from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpuflow.core.artifacts import notebook_name
from gpuflow.run import main as run_main
from tests.flow.test_run import OK, base_args, notebook, only_run, run_json

pytestmark = pytest.mark.usefixtures("steps_present")

PY = [sys.executable, "-m"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

# The kernel caps its own address space, then allocates until refused.
RLIMIT_CELLS = (
    ("import resource, psutil\n"
    "vms = psutil.Process().memory_info().vms\n"
    "resource.setrlimit(resource.RLIMIT_AS, (vms + 300 * 2**20, vms + 300 * 2**20))"),
    "hoard = []\nwhile True:\n    hoard.append(bytearray(16 * 2**20))",
    "print('never reached')",
)


def test_kernel_hitting_rlimit_as_is_a_memory_error_cell(tmp_path: Path) -> None:
    src = notebook(tmp_path / "mem.ipynb", *RLIMIT_CELLS)
    out = tmp_path / "out" / "mem_output.ipynb"
    done = subprocess.run([*PY, "gpuflow.execute", str(src), str(out)], env=ENV, capture_output=True,
                          text=True, check=False, timeout=180)
    # What really happens: malloc fails, Python raises MemoryError in the cell,
    # the kernel lives on and reports it: a cell error, exit 1 (not 137).
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("gpuflow.execute: ")
    assert "MemoryError" in done.stderr
    saved = out.read_text()
    assert "MemoryError" in saved and "never reached" in saved  # the source, never its output
    assert json.loads((out.parent / "steps" / f"{notebook_name(out)}.execute.json").read_text())["exit_code"] == 1


def test_sigterm_to_run_leaves_no_kernel_and_writes_summaries(tmp_path: Path, test_repo: Path,
                                                               watch_gpuflow: object) -> None:
    repo = tmp_path / "nbs"
    for name in ("a", "b"):
        notebook(repo / f"{name}.ipynb", "import time; print('started', flush=True); time.sleep(300)")
    out = tmp_path / "out"
    w = watch_gpuflow("run", *base_args(repo, test_repo, out), "--notebooks", "a.ipynb", "b.ipynb",
                      "--jobs", "2")
    assert w.popen.stdout is not None
    starts = 0
    for line in w.popen.stdout:  # both cells are running in their kernels
        starts += "started" in line
        if starts == 2:
            break
    assert len(w.kernels) >= 2, w.argv
    w.popen.send_signal(signal.SIGTERM)
    rest = w.finish()
    assert w.popen.returncode == 143, rest
    assert w.live_kernels() == []  # no orphaned kernel, though its parent chain was cut
    run_dir = only_run(out)
    data = run_json(run_dir)
    assert data["exit_code"] == 143 and data["stopped"]
    for name in ("a", "b"):
        assert "started" in (run_dir / name / f"{name}_output.ipynb").read_text()  # partial, saved
        assert json.loads((run_dir / name / "summary.json").read_text())["status"] == "failed"
    assert (run_dir / "index.html").is_file()


def _small_disk(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    """A 512 KiB tmpfs when mount is permitted, else RLIMIT_FSIZE in the child."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)],
                             capture_output=True, check=False).returncode == 0
    if mounted:
        return disk, {}
    return disk, {"preexec_fn": lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))}


def test_disk_full_while_converting_keeps_the_previous_html(tmp_path: Path) -> None:
    src = notebook(tmp_path / "big.ipynb", "print('x' * 2_000_000)")
    executed = tmp_path / "big_output.ipynb"
    assert subprocess.run([*PY, "gpuflow.execute", str(src), str(executed)], env=ENV, capture_output=True,
                          check=False, timeout=180).returncode == 0
    disk, limit = _small_disk(tmp_path)
    try:
        html = disk / "big_output.html"
        html.write_text("previous report")
        done = subprocess.run([*PY, "gpuflow.convert", str(executed), str(html), "--log", str(tmp_path / "c.log")],
                              env=ENV, capture_output=True, text=True, check=False, timeout=180, **limit)  # type: ignore[call-overload]
        assert done.returncode != 0
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("gpuflow.convert: ") and ("No space left" in last or "too large" in last), last
        assert "Traceback" not in done.stderr
        assert html.read_text() == "previous report"  # intact, never half-replaced
        # no temp file left behind; the step record says why, if it still fitted
        assert sorted(p.name for p in disk.iterdir() if p.name != "steps") == ["big_output.html"]
        record = disk / "steps" / "convert.json"
        assert not record.exists() or json.loads(record.read_text())["exit_code"] == 3
        assert done.returncode == 3
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, check=False)


def test_two_runs_into_one_out_dir_never_share_a_run_dir(tmp_path: Path, test_repo: Path,
                                                         watch_gpuflow: object) -> None:
    repo = tmp_path / "nbs"
    notebook(repo / "a.ipynb", OK)
    out = tmp_path / "out"
    runs = [watch_gpuflow("run", *base_args(repo, test_repo, out), "--notebooks", "a.ipynb") for _ in range(2)]
    for w in runs:
        w.finish()
        assert w.popen.returncode == 0
    dirs = sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(dirs) == 2
    for run_dir in dirs:
        assert run_json(run_dir)["exit_code"] == 0
        assert "RESULT=" in (run_dir / "a" / "a_output.html").read_text()
    # one run dir, two processes: --resume while a run holds it is refused
    with open(dirs[0] / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_main(["--resume", str(dirs[0])]) == 2


CORRUPT: dict[str, bytes] = {
    "truncated": b'{"cells": [{"cell_type": "code", "sou',
    "binary": bytes(range(256)) * 4,
    "empty": b"",
}


def test_corrupt_notebooks_fail_alone_in_a_run(tmp_path: Path, test_repo: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "nbs"
    repo.mkdir()
    for name, data in CORRUPT.items():
        (repo / f"{name}.ipynb").write_bytes(data)
    ok = notebook(repo / "good.ipynb", OK)
    odd = json.loads(ok.read_text())
    odd["metadata"]["kernelspec"] = {"name": "no-such-kernel", "display_name": "?", "language": "python"}
    (repo / "oddkernel.ipynb").write_text(json.dumps(odd))
    code = run_main([*base_args(repo, test_repo, tmp_path / "out"), "--notebooks", "*.ipynb", "--jobs", "2"])
    data = run_json(only_run(tmp_path / "out"))
    by_name = {n["name"]: n for n in data["notebooks"]}
    assert code == 2
    for name in CORRUPT:
        assert by_name[name]["exit_code"] == 2 and by_name[name]["failed_step"] == "execute", by_name[name]
    # the run's --kernel (python3) names the kernel, as papermill -k does: the
    # notebook's own unknown kernelspec does not matter
    assert by_name["good"]["exit_code"] == 0 and by_name["oddkernel"]["exit_code"] == 0


def test_parameters_that_are_not_a_mapping_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gpuflow.toml"
    cfg.write_text("parameters = [1, 2]\n")
    assert run_main(["--config", str(cfg), "--print-config"]) == 2
    assert "`parameters` must be a table" in capsys.readouterr().err
    src = notebook(tmp_path / "p.ipynb", OK)
    yml = tmp_path / "p.yaml"
    yml.write_text("- 1\n- 2\n")
    done = subprocess.run([*PY, "gpuflow.execute", str(src), str(tmp_path / "o.ipynb"), "-f", str(yml)],
                          env=ENV, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
