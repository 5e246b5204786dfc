"""What a failure inside `gpuflow run` exits with: the code a step's own CLI
gives for it, through the one step harness; and a step records the same
details under `run` as under its own CLI."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpuflow.core import errors
from tests.flow.test_run import base_args, notebook, only_run

pytestmark = pytest.mark.usefixtures("steps_present")

# Room for the executed notebook, its log and the records (a few 10 kB),
# not for its HTML (the lab template alone is about 300 kB).
SMALL_DISK = 160 * 1024


@dataclass(frozen=True)
class SmallDisk:
    path: Path
    limit: Callable[[], None] | None  # for the child, where no tmpfs could be mounted


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A tmpfs of SMALL_DISK bytes (ENOSPC); where mounting is not
    permitted, a file-size limit on the child instead (EFBIG)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(mnt)], capture_output=True,
    ).returncode == 0
    if not mounted:
        yield SmallDisk(mnt, lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (SMALL_DISK, SMALL_DISK)))
        return
    try:
        yield SmallDisk(mnt, None)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def gpuflow_run(args: list[str], *, wrapper: str = "", limit: Callable[[], None] | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`gpuflow run ARGS` in a child process; `wrapper` runs first in it."""
    code = f"import sys\n{wrapper}\nfrom gpuflow.__main__ import main\nraise SystemExit(main(['run', *sys.argv[1:]]))\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)


def test_full_disk_inside_run_is_exit_3_with_one_line(tmp_path: Path, small_disk: SmallDisk) -> None:
    repo = tmp_path / "nbs"
    notebook(repo / "nb.ipynb", "print('RESULT=', n)")
    done = gpuflow_run(["--repo", str(repo), "--test-repo", "", "--out", str(small_disk.path), "--gpu", "off",
                        "--notebooks", "nb.ipynb"], limit=small_disk.limit,
                       env={"GPUFLOW_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == errors.InfraError.exit_code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "gpuflow.convert: disk full while writing" in done.stderr
    nb_dir = only_run(small_disk.path) / "nb"
    rec = json.loads((nb_dir / "steps" / "convert.json").read_text())
    assert rec["exit_code"] == 3 and rec["error"].startswith("gpuflow.convert: disk full while writing")
    assert not (nb_dir / "nb_output.html").exists()  # nothing half-written under its final name


def test_bug_in_a_run_level_step_is_exit_70_with_its_traceback(tmp_path: Path) -> None:
    repo = tmp_path / "nbs"
    notebook(repo / "nb.ipynb", "print('RESULT=', n)")
    (tmp_path / "cells.txt").write_text("42\n")
    (repo / "pyproject.toml").write_text(
        f'[[tool.gpuflow.datasets]]\nurl = "{(tmp_path / "cells.txt").as_uri()}"\ndest = "data/cells.txt"\n')
    # a bug where the datasets step calls out, without touching gpuflow's own code
    broken = ("import urllib.request\n"
              "def urlopen(*args, **kwargs):\n    raise RuntimeError('injected bug')\n"
              "urllib.request.urlopen = urlopen\nurllib.request.OpenerDirector.open = urlopen\n")
    out = tmp_path / "out"
    done = gpuflow_run(["--repo", str(repo), "--test-repo", "", "--out", str(out), "--gpu", "off",
                        "--notebooks", "nb.ipynb", "--trust-repo-config"], wrapper=broken)
    assert done.returncode == errors.INTERNAL, done.stderr[-3000:]
    assert "Traceback" in done.stderr and "RuntimeError: injected bug" in done.stderr
    assert "gpuflow.run: injected bug" in done.stderr.splitlines()[-1]
    run_dir = only_run(out)
    rec = json.loads((run_dir / "steps" / "datasets.json").read_text())
    assert (rec["exit_code"], rec["error"]) == (70, "gpuflow.datasets: injected bug")
    assert json.loads((run_dir / "run.json").read_text())["exit_code"] == 70


def test_a_step_records_the_same_details_under_run_as_under_its_cli(tmp_path: Path, test_repo: Path) -> None:
    from gpuflow import convert, stage
    from gpuflow.run import main

    repo = tmp_path / "nbs"
    notebook(repo / "nb.ipynb", "print('RESULT=', n)")
    out = tmp_path / "out"
    assert main([*base_args(repo, test_repo, out), "--notebooks", "nb.ipynb"]) == 0
    nb_dir = only_run(out) / "nb"
    alone = tmp_path / "alone"
    assert convert.main([str(nb_dir / "nb_output.ipynb"), str(alone / "nb.html"), "--record-dir", str(alone)]) == 0
    assert stage.main(["--html", str(alone / "nb.html"), "--repo", str(test_repo), "--dest", str(alone / "repo"),
                       "--record-dir", str(alone)]) == 0
    resume_keys = {"inputs_sha256", "outputs"}
    for step in ("convert", "stage"):
        under_run = json.loads((nb_dir / "steps" / f"{step}.json").read_text())["details"]
        by_cli = json.loads((alone / "steps" / f"{step}.json").read_text())["details"]
        assert set(under_run) - resume_keys == set(by_cli), step
