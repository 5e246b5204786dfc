"""What a person reads on the console of `gpuflow run` and `gpuflow execute`."""
from __future__ import annotations

import re
from pathlib import Path

from tests.contact.helpers import gpuflow, only_run_dir, write_notebook


def _test_repo(path: Path) -> Path:
    (path / "tests").mkdir(parents=True)
    (path / "pytest.ini").write_text("[pytest]\nmarkers =\n    single_cell: x\n")
    (path / "tests" / "test_a.py").write_text(
        "import pytest\n\n@pytest.mark.single_cell\ndef test_page():\n    print('TESTLINE')\n")
    return path


def test_parallel_lines_carry_their_notebook_and_paths_exist(tmp_path: Path) -> None:
    write_notebook(tmp_path / "one.ipynb", "print('cell output one')")
    write_notebook(tmp_path / "two.ipynb", "print('cell output two')")
    _test_repo(tmp_path / "checks")
    args = ("run", "--gpu", "off", "--jobs", "2", "--notebooks", "one.ipynb", "two.ipynb", "--test-repo", "checks",
            "--log-format", "plain")
    done = gpuflow(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    table = next(i for i, line in enumerate(lines) if line.startswith("notebook "))
    body = [line for line in lines[:table] if "gpuflow.run: run directory" not in line]
    unprefixed = [line for line in body if not re.match(r"^\[(one|two)\] ", line)]
    assert not unprefixed, unprefixed
    text = "\n".join(lines)
    assert "[one] cell output one" in text and "[two] cell output two" in text
    assert "Executing Cell" not in text and "Ending Cell" not in text  # bookkeeping stays in the log file
    run_dir = only_run_dir(tmp_path / "gpuflow-out")
    assert "Executing Cell 1" in (run_dir / "one" / "papermill.log").read_text()
    for path in re.findall(r"(/\S+\.(?:html|xml|ipynb))\b", text):
        if "/.work/" not in path or "pytest-out" in path:
            assert Path(path).exists(), path
    # resumed: the kept test step prints nothing of its early pytest
    again = gpuflow("run", "--resume", str(run_dir), "--log-format", "plain", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "_pytest.outcomes.Exit" not in again.stdout + again.stderr
    assert "tests not run" not in again.stdout + again.stderr


def test_execute_console_has_the_cells_output_and_not_the_chatter(tmp_path: Path) -> None:
    write_notebook(tmp_path / "n.ipynb", "print('visible output')", "1 + 1")
    done = gpuflow("execute", "n.ipynb", "out/n_output.ipynb", "--gpu", "off", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "visible output" in done.stderr
    assert "Executing Cell" not in done.stderr and "Skipping non-executing cell" not in done.stderr
    log = (tmp_path / "out" / "n.papermill.log").read_text()
    assert "Executing Cell 1" in log and "visible output" in log
