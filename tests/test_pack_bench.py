"""The CPU side of benchmarks/pack_bench.sh, so that its first run on the
GPU machine is not its first run: the notebooks it ships, the commands it
builds, the history it plants, how it reads a run and what it writes when
there is no GPU."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from benchmarks import pack_bench
from gpuflow.flow import config, history, pack

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def test_the_shipped_notebooks_are_what_the_generator_writes_and_small_enough() -> None:
    for name, size in zip(pack_bench.SUITE, pack_bench.SIZES_GIB, strict=True):
        assert (pack_bench.NOTEBOOKS / name).read_text() == pack_bench.notebook_json(size), name
        # x and y live at once: 2 * size, plus a CUDA context, under 5 GiB and 30 % of an 80 GB H100
        assert 2 * size + 0.5 <= 5 and 2 * size + 0.5 <= 0.3 * 80
        nbformat.validate(nbformat.read(str(pack_bench.NOTEBOOKS / name), as_version=4))
    assert (pack_bench.NOTEBOOKS / pack_bench.GROWS).read_text() == pack_bench.notebook_json(pack_bench.GROWS_GIB / 2)


def test_the_planted_history_is_far_below_what_grows_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / pack_bench.GROWS).write_text((pack_bench.NOTEBOOKS / pack_bench.GROWS).read_text())
    env = {**os.environ, "GPUFLOW_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    assert pack_bench.plant_history(repo, env) is None
    monkeypatch.setenv("GPUFLOW_CACHE_DIR", str(tmp_path / "cache"))
    cfg = config.resolve(env={}, cli={"repo": str(repo)}).config
    planted = history.lookup(*history.key_for(cfg, repo / pack_bench.GROWS, pack_bench.GROWS))
    assert planted is not None
    cap = pack.Placement(name="grows", need_bytes=pack.need(pack.Item(
        name="grows", rmm_peak_bytes=planted.rmm_peak_bytes, device_peak_bytes=planted.device_peak_bytes)),
        duration_s=None).pool_cap_bytes
    assert cap is not None and cap < pack_bench.GROWS_GIB / 2 * GIB  # its first array cannot fit: out of memory


def test_the_commands_it_runs_are_accepted(tmp_path: Path) -> None:
    cmd = pack_bench.gpuflow_run(tmp_path / "o", ROOT / "benchmarks" / "pack_notebooks", pack_bench.SUITE,
                                 "--pack", "--gpus", "0")
    out = subprocess.run([*cmd, "--print-config"], capture_output=True, text=True, cwd=ROOT, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert '"pack_7.ipynb"' in out.stdout and "pack" in out.stdout


def test_ratio_and_reading_a_run(tmp_path: Path) -> None:
    serial = {"makespan_s": 100.0, "exit_code": 0}
    good = {"makespan_s": 30.0, "exit_code": 0, "notebooks": {"a": {"exit_code": 0}}}
    assert pack_bench.ratio(good, serial, 0.4) == {"ratio": 0.3, "target": 0.4, "met": True, "failures": []}
    bad = {"makespan_s": 30.0, "exit_code": 1, "notebooks": {"a": {"exit_code": 1}}}
    assert pack_bench.ratio(bad, serial, 0.4)["met"] is False
    assert pack_bench.ratio({}, serial, 0.4)["ratio"] is None
    repo = tmp_path / "repo"
    repo.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('RESULT=', 1)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(repo / "a.ipynb"))
    subprocess.run([sys.executable, "-m", "gpuflow.run", "--repo", str(repo), "--notebooks", "a.ipynb",
                    "--test-repo", "", "--gpu", "off", "--out", str(tmp_path / "out")], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "GPUFLOW_CACHE_DIR": str(tmp_path / "cache")},
                   capture_output=True)
    facts = pack_bench.read_run(tmp_path / "out")
    assert facts["exit_code"] == 0 and facts["makespan_s"] > 0 and facts["notebooks"]["a"]["exit_code"] == 0
    assert "error" in pack_bench.read_run(tmp_path / "nothing")


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine: the benchmark would run")
def test_without_a_gpu_it_writes_why_and_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OUT": str(tmp_path / "out"), "PATH": "/usr/bin:/bin"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    subprocess.run(["sh", "-n", "benchmarks/pack_bench.sh"], check=True, cwd=ROOT)
    done = subprocess.run(["sh", "benchmarks/pack_bench.sh"], cwd=ROOT, env={**env, "PYTHON": sys.executable},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    written = json.loads((tmp_path / "out" / "pack_bench.json").read_text())
    assert written["error"] and written["exit"] == 2
