"""Config precedence: defaults < TOML < GPUFLOW_* env < CLI, with sources."""
from __future__ import annotations

from pathlib import Path

import pytest

from gpuflow.core import errors
from gpuflow.flow import config
from gpuflow.run import main


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_each_layer_beats_the_one_below(tmp_path: Path) -> None:
    toml = write(tmp_path / "gpuflow.toml", 'marker = "from_toml"\njobs = 3\nprofile = "lite"\n'
                 'parameters = {n = 1, m = "x"}\n')
    env = {"GPUFLOW_JOBS": "4", "GPUFLOW_PROFILE": "full", "GPUFLOW_FAIL_FAST": "yes"}
    r = config.resolve(cli={"profile": "lite"}, env=env, config_file=toml)
    assert (r.config.marker, r.config.jobs, r.config.profile, r.config.fail_fast) == ("from_toml", 4, "lite", True)
    assert r.config.parameters == {"n": 1, "m": "x"}
    assert r.sources["marker"] == str(toml)
    assert r.sources["jobs"] == "env GPUFLOW_JOBS"
    assert r.sources["profile"] == "cli --profile"
    assert r.sources["seed"] == "default"


def test_pyproject_tool_table_of_the_repo(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n[tool.gpuflow]\nmarker = "m"\n'
                      'timeouts = {"big" = 60}\n')
    r = config.resolve(env={}, repo_pyproject=pyproject)
    assert r.config.marker == "m" and config.timeout_for(r.config, "nb/big.ipynb", "big") == 60.0


@pytest.mark.parametrize("where", ["toml", "pyproject", "dataset"])
def test_unknown_key_is_named(tmp_path: Path, where: str) -> None:
    text = {"toml": "markr = 'x'\n", "pyproject": "[tool.gpuflow]\nmarkr = 'x'\n",
            "dataset": "[[datasets]]\nurl = 'http://h/x'\ndest = 'x'\nmd6 = 'y'\n"}[where]
    path = write(tmp_path / ("pyproject.toml" if where == "pyproject" else "gpuflow.toml"), text)
    with pytest.raises(errors.ConfigError, match="markr" if where != "dataset" else r"datasets\[0\]\.md6"):
        config.resolve(env={}, config_file=path)


def test_cli_unknown_key_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "gpuflow.toml", "notebok = 'a.ipynb'\n")
    assert main(["--config", str(path), "--print-config"]) == 2
    assert "unknown option 'notebok'" in capsys.readouterr().err


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(errors.ConfigError, match="GPUFLOW_JOBS"):
        config.resolve(env={"GPUFLOW_JOBS": "two"})
    with pytest.raises(errors.ConfigError, match="profile"):
        config.resolve(env={"GPUFLOW_PROFILE": "medium"})


def test_env_structured_values() -> None:
    r = config.resolve(env={"GPUFLOW_NOTEBOOKS": "a.ipynb, b/*.ipynb", "GPUFLOW_PARAMETERS": '{n = 2}',
                            "GPUFLOW_DATASETS": '[{url = "http://h/d", dest = "d.h5ad", size = 3}]'})
    assert r.config.notebooks == ("a.ipynb", "b/*.ipynb")
    assert r.config.parameters == {"n": 2} and r.config.datasets[0]["size"] == 3


def test_print_config_shows_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    toml = write(tmp_path / "gpuflow.toml", "jobs = 3\nseed = 5\n")
    monkeypatch.setenv("GPUFLOW_SEED", "7")
    assert main(["--config", str(toml), "--print-config", "-p", "n_cells", "500", "--gpus", "0,1"]) == 0
    lines = {line.split("=")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert lines["jobs"].endswith(f"# {toml}")
    assert "7" in lines["seed"] and lines["seed"].endswith("# env GPUFLOW_SEED")
    assert '{"n_cells": 500}' in lines["parameters"] and lines["parameters"].endswith("# cli -p")
    assert lines["gpus"].endswith("# cli --gpus") and lines["marker"].endswith("# default")


def test_docs_tag_every_option() -> None:
    text = (config.PROJECT_ROOT / "docs" / "options.md").read_text()
    for name, opt in config.OPTIONS.items():
        assert f"### `{name}`" in text, name
        assert config.env_name(name) in text
        if opt.cli:
            assert (config.flag_name(name) if name != "parameters" else "-p NAME VALUE") in text


def test_importing_run_stays_light() -> None:
    import subprocess
    import sys

    heavy = ["papermill", "nbconvert", "nbclient", "jupyter_client", "git", "cupy", "rmm"]
    code = ("import sys, gpuflow.run, gpuflow.flow.config, gpuflow.flow.notebook, gpuflow.flow.schedule, gpuflow.flow.resume; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bundled_example_lite_profile_runs_at_lite_size() -> None:
    # the project's own [tool.gpuflow] configures the bundled notebook: lite is 50,000 x 10,000
    r = config.resolve(cli={"profile": "lite"}, env={}, repo_pyproject=config.PROJECT_ROOT / "pyproject.toml")
    assert config.notebook_parameters(r.config) == {"n_cells": 50000, "n_genes": 10000}
