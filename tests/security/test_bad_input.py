"""Hostile or broken input is exit 2 with one line, never a traceback, a hang or a lost run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.flow.test_run import notebook, only_run
from tests.security.conftest import gpuflow

# 381 bytes of YAML that name 9**9 values through aliases
ALIAS_BOMB = "\n".join(
    [f"{chr(97)}: &{chr(97)} [x,x,x,x,x,x,x,x,x]"]
    + [f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]" for i in range(1, 9)]
) + "\n"


def _one_line_exit_2(done: object) -> str:
    rc, err = done.returncode, done.stderr  # type: ignore[attr-defined]
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("step", ["execute", "convert"])
@pytest.mark.parametrize("text", ["[" * 1_000_000 + "]" * 1_000_000, '{"nbformat": 1, "cells": []}',
                                  '{"nbformat": true, "nbformat_minor": 0, "metadata": {}, "cells": []}'],
                         ids=["nested-1e6", "nbformat-1", "nbformat-true"])
def test_hostile_notebooks_are_exit_2(tmp_path: Path, step: str, text: str) -> None:
    nb = tmp_path / "bad.ipynb"
    nb.write_text(text)
    out = tmp_path / ("bad_output.ipynb" if step == "execute" else "bad.html")
    line = _one_line_exit_2(gpuflow(step, str(nb), str(out), timeout=120))
    assert "bad.ipynb" in line
    assert not out.exists()


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    assert len(ALIAS_BOMB) < 400
    nb = notebook(tmp_path / "nb.ipynb", "print('RESULT=', n)")
    line = _one_line_exit_2(gpuflow("execute", str(nb), str(tmp_path / "out.ipynb"), "-y", ALIAS_BOMB, timeout=60))
    assert "aliases" in line
    assert not (tmp_path / "out.ipynb").exists()


def test_bad_run_options_are_exit_2(tmp_path: Path) -> None:
    repo = tmp_path / "nbs"
    notebook(repo / "nb.ipynb", "print('RESULT=', n)")
    base = ["run", "--repo", str(repo), "--notebooks", "nb.ipynb", "--test-repo", "", "--gpu", "off",
            "--out", str(tmp_path / "out")]
    assert "-p pattern" in _one_line_exit_2(gpuflow(*base, "-p", "pattern", "*.h5ad"))
    (tmp_path / "t.toml").write_text('timeouts = {nb = "x"}\n')
    assert "timeouts.nb" in _one_line_exit_2(gpuflow(*base, "--config", str(tmp_path / "t.toml")))
    (tmp_path / "d.toml").write_text('[[datasets]]\nurl = "http://127.0.0.1:9/x"\ndest = "x"\nsha256 = 5\n')
    assert "sha256" in _one_line_exit_2(gpuflow(*base, "--config", str(tmp_path / "d.toml")))


def test_yaml_dates_stay_strings_and_the_run_is_saved(tmp_path: Path) -> None:
    repo, out = tmp_path / "nbs", tmp_path / "out"
    notebook(repo / "nb.ipynb", "print('RESULT=', type(when).__name__, when)", parameters="when = None")
    done = gpuflow("run", "--repo", str(repo), "--notebooks", "nb.ipynb", "--test-repo", "", "--gpu", "off",
                   "--out", str(out), "-p", "when", "2024-01-02")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = only_run(out)
    assert json.loads((run_dir / "config.json").read_text())["config"]["parameters"] == {"when": "2024-01-02"}
    assert "RESULT= str 2024-01-02" in (run_dir / "nb" / "nb_output.ipynb").read_text()
    nb = notebook(tmp_path / "one.ipynb", "print('RESULT=', type(when).__name__)", parameters="when = None")
    one = gpuflow("execute", str(nb), str(tmp_path / "one_out.ipynb"), "-y", "when: 2024-01-02 10:00:00")
    assert one.returncode == 0, one.stderr[-2000:]
    assert "RESULT= str" in (tmp_path / "one_out.ipynb").read_text()


def test_toml_dates_in_parameters_are_saved_as_text(tmp_path: Path) -> None:
    repo, out = tmp_path / "nbs", tmp_path / "out"
    notebook(repo / "nb.ipynb", "print('RESULT=', type(when).__name__, when)", parameters="when = None")
    (tmp_path / "c.toml").write_text("parameters = {when = 2024-01-02}\n")
    done = gpuflow("run", "--repo", str(repo), "--notebooks", "nb.ipynb", "--test-repo", "", "--gpu", "off",
                   "--out", str(out), "--config", str(tmp_path / "c.toml"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RESULT= str 2024-01-02" in (only_run(out) / "nb" / "nb_output.ipynb").read_text()
