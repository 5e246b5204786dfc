"""gpuflow.test installs pytest-cov and pytest-html into a test env that lacks
them, and then uses them on that very run. Offline: the plugins' wheels are
built here from the installed packages, and pip reads them from a local
wheelhouse (PIP_NO_INDEX, PIP_FIND_LINKS), never from an index."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gpuflow import test as testrun

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = tuple(testrun.PLUGINS.values())
# what pip writes into a dist-info at install time: not part of a wheel
INSTALL_ONLY = {"INSTALLER", "RECORD", "REQUESTED", "direct_url.json"}


def _wheel(dist_name: str, wheelhouse: Path) -> Path:
    """A wheel of an installed pure-Python distribution, with a fresh RECORD."""
    dist = metadata.distribution(dist_name)
    files = [f for f in dist.files or [] if ".." not in f.parts and "__pycache__" not in f.parts]
    info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    assert "Root-Is-Purelib: true" in (dist.read_text("WHEEL") or ""), f"{dist_name} is not pure Python"
    name = canonicalize_name(dist.metadata["Name"]).replace("-", "_")
    path = wheelhouse / f"{name}-{dist.version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as whl:
        for f in files:
            if f.parts[0] == info and f.name in INSTALL_ONLY:
                continue
            data = Path(str(f.locate())).read_bytes()
            whl.writestr(f.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{f.as_posix()},sha256={digest},{len(data)}")
        whl.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return path


def _requirements(dist_name: str, seen: set[str]) -> set[str]:
    """`dist_name` and what it needs, transitively, as installed here."""
    key = canonicalize_name(dist_name)
    if key in seen:
        return seen
    seen.add(key)
    for line in metadata.distribution(dist_name).requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            _requirements(req.name, seen)
    return seen


def _link_installed(names: set[str], target: Path) -> None:
    """Make the installed distributions `names` (code and metadata) visible in `target`."""
    target.mkdir()
    for name in names:
        dist = metadata.distribution(name)
        for top in {f.parts[0] for f in dist.files or [] if ".." not in f.parts and len(f.parts) >= 1}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (target / top).exists() and not top.endswith(".pth"):
                (target / top).symlink_to(source)


@pytest.fixture
def env_without_plugins(tmp_path: Path) -> Path:
    """A fresh venv with pytest (and what the plugins need) but neither plugin."""
    needs = set().union(*(_requirements(p, set()) for p in PLUGINS)) - {canonicalize_name(p) for p in PLUGINS}
    _link_installed(needs, tmp_path / "deps")
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the deps and gpuflow itself on the venv's path, as if installed there
    (Path(site) / "gpuflow-test-deps.pth").write_text(f"{tmp_path / 'deps'}\n{ROOT}\n")
    probe = subprocess.run([python, "-c", "import pytest, coverage, jinja2, pytest_metadata, gpuflow.test\n"
                            "import importlib.util as u; print(u.find_spec('pytest_cov'), u.find_spec('pytest_html'))"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "None None", probe.stderr
    return python


def test_first_run_installs_the_plugins_and_uses_them(tmp_path: Path, env_without_plugins: Path) -> None:
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    for plugin in PLUGINS:
        _wheel(plugin, wheelhouse)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pytest.ini").write_text("[pytest]\nmarkers =\n    single_cell: x\n")
    (repo / "test_ok.py").write_text("import pytest\n\n@pytest.mark.single_cell\ndef test_ok():\n    pass\n")
    out = tmp_path / "out"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "GPUFLOW_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)  # gpuflow comes from the venv's own path
    done = subprocess.run([env_without_plugins, "-m", "gpuflow.test", str(repo), "--marker", "single_cell",
                           "--out-dir", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "its report is skipped" not in done.stdout + done.stderr  # gpuflow's warning, not pip's
    assert (out / "coverage.xml").is_file() and (out / "pytest_report.html").is_file()
    record = json.loads((out / "steps" / "test.json").read_text())
    assert record["status"] == "success" and record["details"]["passed"] == 1
    # installed into the test env, where the next run finds them
    probe = subprocess.run([env_without_plugins, "-c", "import pytest_cov, pytest_html"], capture_output=True)
    assert probe.returncode == 0
