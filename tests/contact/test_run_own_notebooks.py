"""`gpuflow run` on your own notebooks, from your own folder."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.contact.helpers import ROOT, gpuflow, only_run_dir, summaries_say, write_notebook


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    here = tmp_path / "mine"
    write_notebook(here / "my.ipynb", "x = 1", "print('hello from my notebook', x)")
    write_notebook(here / "sub" / "a.ipynb", "print('sub a')")
    write_notebook(here / "sub" / "b.ipynb", "print('sub b')")
    return here


def test_own_notebooks_run_from_where_you_stand_and_no_demo_tests_judge_them(folder: Path) -> None:
    done = gpuflow("run", "--gpu", "off", "--notebooks", "my.ipynb", "./sub/a.ipynb", str(folder / "sub" / "b.ipynb"),
                   cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hello from my notebook" in done.stdout + done.stderr
    run_dir = only_run_dir(folder / "gpuflow-out")
    assert sorted(p.name for p in run_dir.iterdir() if (p / "steps").is_dir()) == ["a", "b", "my"]
    table = done.stdout
    assert "skipped (no test repo)" in table.splitlines()[1], table
    said = summaries_say(run_dir)
    assert said["json"] == 0 and said["md"] and said["html"]
    assert "skipped (no test repo)" in said["md_text"] and "skipped (no test repo)" in said["page"]
    my = json.loads((run_dir / "my" / "summary.json").read_text())
    assert {s["name"]: s["note"] for s in my["steps"]}["test"] == "no test repo"


def test_globs_and_config_dir_and_outside_paths(folder: Path, tmp_path: Path) -> None:
    done = gpuflow("run", "--gpu", "off", "--notebooks", "sub/*.ipynb", cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    # with --config, the repo is the config file's directory, wherever you stand
    (folder / "gpuflow.toml").write_text('notebooks = ["my.ipynb"]\ngpu = "off"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = gpuflow("run", "--config", str(folder / "gpuflow.toml"), "--print-config", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert f'repo                  = "{folder}"' in done.stdout or f'"{folder}"' in done.stdout
    # a notebook outside the repo is one line, exit 2, and no empty run dir
    outside = write_notebook(tmp_path / "other.ipynb", "1")
    done = gpuflow("run", "--gpu", "off", "--notebooks", str(outside), "--out", str(elsewhere / "out"), cwd=folder)
    assert done.returncode == 2, done.stderr
    assert "outside the notebook repo" in done.stderr
    run_dir = only_run_dir(elsewhere / "out")
    said = summaries_say(run_dir)
    assert said["json"] == 2 and said["md"] and said["html"]
    assert "outside the notebook repo" in said["md_text"] and "outside the notebook repo" in said["page"]


def test_no_notebooks_no_config_runs_the_bundled_demo(tmp_path: Path) -> None:
    done = gpuflow("run", "--print-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "scrna_preprocessing.ipynb" in done.stdout and "bundled demo" in done.stdout
    assert "notebook-tests" in done.stdout


def test_empty_test_repo_passes_and_summaries_agree(folder: Path) -> None:
    done = gpuflow("run", "--gpu", "off", "--notebooks", "my.ipynb", "--test-repo", "", cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    said = summaries_say(only_run_dir(folder / "gpuflow-out"))
    assert said["json"] == 0 and said["md"] and said["html"]
    assert said["data"]["status"] == "success"


def test_sigterm_exit_code_is_the_summaries_exit_code(folder: Path) -> None:
    write_notebook(folder / "slow.ipynb", "import time\nprint('started', flush=True)\ntime.sleep(60)")
    cmd = [sys.executable, "-m", "gpuflow", "run", "--gpu", "off", "--notebooks", "slow.ipynb"]
    child = subprocess.Popen(cmd, cwd=folder, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    deadline = time.monotonic() + 120
    for line in child.stdout:
        if "started" in line or time.monotonic() > deadline:
            break
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=120)
    assert child.returncode == 143
    said = summaries_say(only_run_dir(folder / "gpuflow-out"))
    assert said["json"] == 143 and said["md"] and said["html"]
