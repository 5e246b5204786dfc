"""20 tiny notebooks through `gpuflow run --jobs 4`: nothing leaks. Figures
go to docs/reliability.md (printed with -s)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.flow.test_run import OK, base_args, notebook, only_run, run_json

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("steps_present")]

COUNT, JOBS = 20, 4


def test_twenty_notebooks_four_at_a_time_leak_nothing(tmp_path: Path, test_repo: Path, watch_gpuflow: Any) -> None:
    repo = tmp_path / "nbs"
    for i in range(COUNT):
        notebook(repo / f"nb{i:02d}.ipynb", OK, parameters=f"n = {i}")
    out, tmp, runtime = tmp_path / "out", tmp_path / "tmp", tmp_path / "jupyter-runtime"
    tmp.mkdir()
    runtime.mkdir()
    t0 = time.monotonic()
    # private TMPDIR and Jupyter runtime dir: leaked temp dirs or connection files show up there
    w = watch_gpuflow("run", *base_args(repo, test_repo, out), "--notebooks", "*.ipynb", "--jobs", str(JOBS),
                      env={"TMPDIR": str(tmp), "JUPYTER_RUNTIME_DIR": str(runtime)})
    runner = psutil.Process(w.popen.pid)
    fds_by_done: dict[int, list[int]] = {}
    while w.popen.poll() is None:
        done = len(list(out.glob("*/nb*/steps/test.json")))
        try:
            fds_by_done.setdefault(done, []).append(runner.num_fds())
        except psutil.Error:
            break
        time.sleep(0.05)
    printed = w.finish()
    wall = time.monotonic() - t0
    assert w.popen.returncode == 0, printed[-3000:]
    run_dir = only_run(out)
    data = run_json(run_dir)
    assert data["exit_code"] == 0 and len(data["notebooks"]) == COUNT
    for nb in data["notebooks"]:
        assert nb["exit_code"] == 0 and nb["steps"]["test"] == "success", nb
        summary = json.loads((run_dir / nb["name"] / "summary.json").read_text())
        assert summary["status"] == "success", summary
        assert f"RESULT= {int(nb['name'][2:]) * 2}" in (run_dir / nb["name"] / f"{nb['name']}_output.html").read_text()
    assert len(w.kernels) >= COUNT and w.live_kernels() == []
    assert list(tmp.iterdir()) == [] and list(runtime.iterdir()) == []
    # the runner's fds once the first notebooks are done vs before the last one: the fewest
    # seen (the moments between children) must not grow with the notebooks run
    early = min(fd for done in range(1, JOBS + 1) for fd in fds_by_done.get(done, []))
    late = min(fd for done in range(COUNT - JOBS, COUNT) for fd in fds_by_done.get(done, []))
    peak = max(fd for fds in fds_by_done.values() for fd in fds)
    print(f"\nLOAD: {COUNT} notebooks, --jobs {JOBS}: wall {wall:.1f}s, kernels seen {len(w.kernels)}, "
          f"runner fds early-min {early} late-min {late} peak {peak}, children seen {len(set(w.argv))}")
    assert late <= early + 2, fds_by_done
