"""`gpuflow doctor` checks what a run needs; the CLI speaks one language."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.contact.helpers import ROOT, gpuflow, write_notebook


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python whose prefix has no Jupyter data, with the packages on PYTHONPATH:
    what `pip install --target DIR` leaves you with."""
    base = tmp_path_factory.mktemp("bare")
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(base / "venv")],
                   check=True)
    return base / "venv" / "bin" / "python"


def _bare(python: Path, *args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    site = sysconfig.get_paths()["purelib"]
    full = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": f"{ROOT}:{site}", **env}
    return subprocess.run([str(python), "-m", "gpuflow", *args], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=240)


def test_doctor_finds_the_missing_lab_template_and_convert_says_the_same(bare_python: Path, tmp_path: Path) -> None:
    if (Path("/usr/share/jupyter") / "nbconvert").exists() or (Path("/usr/local/share/jupyter") / "nbconvert").exists():
        pytest.skip("nbconvert templates are installed system-wide here")
    done = _bare(bare_python, "doctor", "--gpu", "off", cwd=tmp_path, env={})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "nbconvert lab template" in done.stdout and "JUPYTER_PATH" in done.stdout
    nb = write_notebook(tmp_path / "n.ipynb", "1")
    conv = _bare(bare_python, "convert", str(nb), cwd=tmp_path, env={})
    assert conv.returncode == 2 and "JUPYTER_PATH" in conv.stderr.splitlines()[-1], conv.stderr
    share = Path(sys.prefix) / "share" / "jupyter"
    fixed = _bare(bare_python, "doctor", "--gpu", "off", cwd=tmp_path, env={"JUPYTER_PATH": str(share)})
    assert "ok   nbconvert lab template" in fixed.stdout, fixed.stdout


def test_doctor_fails_on_a_missing_kernel_or_an_unwritable_out_dir(tmp_path: Path) -> None:
    done = gpuflow("doctor", "--gpu", "off", "--kernel", "no-such-kernel", cwd=tmp_path)
    assert done.returncode == 2 and "kernel no-such-kernel" in done.stdout
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")  # unwritable as a directory, for root too
    done = gpuflow("doctor", "--gpu", "off", "--out", str(blocked / "runs"), cwd=tmp_path)
    assert done.returncode == 2 and "out dir" in done.stderr and "NOT writable" in done.stdout


@pytest.mark.parametrize("step", ["run", "execute", "clone", "download", "convert", "stage", "test", "summary",
                                  "doctor"])
def test_usage_says_gpuflow_step_and_shows_defaults(step: str, tmp_path: Path) -> None:
    done = gpuflow(step, "--help", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith(f"usage: gpuflow {step} "), done.stdout[:200]
    assert "(default: " in done.stdout


def test_parameter_and_pass_env_are_spelled_and_repeated_alike(tmp_path: Path) -> None:
    for step in ("run", "execute"):
        text = " ".join(gpuflow(step, "--help", cwd=tmp_path).stdout.split())
        assert "-p NAME VALUE, --parameter NAME VALUE" in text, step
        assert "--pass-env NAME" in text and "(repeat for more)" in text, step
    shown = gpuflow("run", "--notebooks", "x.ipynb", "-p", "a", "1", "-p", "b", "two", "--pass-env", "A_TOKEN",
                    "--pass-env", "B_KEY", "--print-config", cwd=tmp_path)
    assert '"A_TOKEN", "B_KEY"' in shown.stdout and '{"a": 1, "b": "two"}' in shown.stdout, shown.stdout
    nb = write_notebook(tmp_path / "p.ipynb", "a = 0\nb = 0", "print('A', a, 'B', b)")
    nb_json = __import__("json").loads(nb.read_text())
    nb_json["cells"][0]["metadata"]["tags"] = ["parameters"]
    nb.write_text(__import__("json").dumps(nb_json))
    done = gpuflow("execute", "p.ipynb", "out/p_out.ipynb", "--gpu", "off", "-p", "a", "1", "--parameter", "b", "2",
                   "--pass-env", "A_TOKEN", "--pass-env", "B_KEY", cwd=tmp_path)
    assert done.returncode == 0 and "A 1 B 2" in done.stderr, done.stderr[-2000:]
