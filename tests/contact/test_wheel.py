"""A built wheel carries the demo: `gpuflow run` works from it, offline."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.contact.helpers import ROOT, gpuflow, write_notebook


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("wheel") is None:
        pytest.skip("the `wheel` package is not installed (pip install wheel)")
    base = tmp_path_factory.mktemp("wheel")
    src, dist, target = base / "src", base / "dist", base / "target"
    # build from the tracked files only, as a fresh clone would: a build in
    # the checkout would leave build/ and egg-info behind
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((ROOT / rel).read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", ".", "-w", str(dist)], cwd=src, check=True)
    wheels = list(dist.glob("gpuflow-*.whl"))
    assert len(wheels) == 1, wheels
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheels[0])], check=True)
    return target


def test_wheel_runs_the_demo_and_your_notebook(installed: Path, tmp_path: Path) -> None:
    where = gpuflow("run", "--print-config", cwd=tmp_path, pythonpath=[installed])
    assert str(installed / "gpuflow" / "_demo") in where.stdout, where.stdout + where.stderr
    probe = subprocess.run([sys.executable, "-c", "import gpuflow; print(gpuflow.__file__)"], cwd=tmp_path,
                           env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert probe.stdout.strip().startswith(str(installed)), probe
    demo = gpuflow("run", "--gpu", "off", cwd=tmp_path, pythonpath=[installed])
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert "scrna_preprocessing" in demo.stdout
    mine = tmp_path / "mine"
    write_notebook(mine / "my.ipynb", "print('mine')")
    own = gpuflow("run", "--gpu", "off", "--repo", ".", "--notebooks", "my.ipynb", cwd=mine, pythonpath=[installed])
    assert own.returncode == 0, own.stdout[-2000:] + own.stderr[-3000:]
    assert "skipped (no test repo)" in own.stdout
