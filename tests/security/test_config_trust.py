"""A notebook repo's own config shapes its notebooks, never the runner's secrets or hosts."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.flow.test_run import notebook, only_run
from tests.security.conftest import gpuflow

GH = "ghs_GITHUBTOKEN_trust_0123456789"
AWS = "aws_SECRET_trust_0123456789"


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        body = b"data\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, str]]]]:
    class Handler(_Recorder):
        seen: list[dict[str, str]] = []

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Handler.seen
    server.shutdown()
    server.server_close()


def _fork_repo(repo: Path, server: str) -> None:
    notebook(repo / "a.ipynb", "import os\nprint('RESULT=', n)\nprint('GH=', os.environ.get('GITHUB_TOKEN'))")
    (repo / "pyproject.toml").write_text(
        '[tool.gpuflow]\nnotebooks = ["a.ipynb"]\npass_env = ["GITHUB_TOKEN"]\ntoken_env = "AWS_SECRET_ACCESS_KEY"\n'
        f'test_repo = "{server}/tests.git"\n'
        f'[[tool.gpuflow.datasets]]\nurl = "{server}/data.bin"\ndest = "data.bin"\n')


def test_a_fork_cannot_set_pass_env_token_env_datasets_or_test_repo(
        tmp_path: Path, recorder: tuple[str, list[dict[str, str]]]) -> None:
    server, seen = recorder
    repo, out = tmp_path / "fork", tmp_path / "out"
    _fork_repo(repo, server)
    env = {"GITHUB_TOKEN": GH, "AWS_SECRET_ACCESS_KEY": AWS}
    done = gpuflow("run", "--repo", str(repo), "--out", str(out), "--gpu", "off", "--test-repo", "", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for key in ("pass_env", "token_env", "datasets", "test_repo"):
        assert f"`{key}` ignored" in done.stderr, done.stderr[-3000:]
    assert "--pass-env" in done.stderr and "GPUFLOW_TOKEN_ENV" in done.stderr  # how to set it from the runner
    output = (only_run(out) / "a" / "a_output.ipynb").read_text()
    assert "RESULT=" in output and GH not in output and "GH= None" in output
    assert seen == []  # neither the dataset nor the test repo was fetched from the fork's server
    shown = gpuflow("run", "--repo", str(repo), "--print-config", env=env)
    assert shown.returncode == 0, shown.stderr
    line = next(ln for ln in shown.stdout.splitlines() if ln.startswith("pass_env"))
    assert "[]" in line and "ignored from" in line and str(repo / "pyproject.toml") in line


def test_trust_repo_config_is_the_runners_choice(tmp_path: Path) -> None:
    repo = tmp_path / "own"
    notebook(repo / "a.ipynb", "print('RESULT=', n)")
    (repo / "gpuflow.toml").write_text('notebooks = ["a.ipynb"]\npass_env = ["HF_TOKEN"]\n')
    plain = gpuflow("run", "--repo", str(repo), "--print-config")
    trusted = gpuflow("run", "--repo", str(repo), "--print-config", "--trust-repo-config")
    assert 'pass_env' in plain.stdout and '"HF_TOKEN"' not in plain.stdout, plain.stdout
    assert '["HF_TOKEN"]' in trusted.stdout and "`pass_env` ignored" not in trusted.stderr


def test_config_where_you_stand(tmp_path: Path) -> None:
    repo, runner = tmp_path / "nbs", tmp_path / "ci"
    notebook(repo / "a.ipynb", "print('RESULT=', n)")
    runner.mkdir()
    # the runner's own folder: everything may be set, and relative paths are the file's
    (runner / "gpuflow.toml").write_text('repo = "../nbs"\nout = "runs"\ntoken_env = "CI_DEPLOY"\n')
    shown = gpuflow("run", "--print-config", cwd=runner)
    assert shown.returncode == 0, shown.stderr
    assert f'"{runner / "runs"}"' in shown.stdout and f'"{runner / ".." / "nbs"}"' in shown.stdout
    assert '"CI_DEPLOY"' in shown.stdout
    # standing in the notebook repo: its pyproject.toml may shape the notebooks only
    (repo / "pyproject.toml").write_text('[tool.gpuflow]\nmarker = "m1"\ntoken_env = "CI_DEPLOY"\n')
    inside = gpuflow("run", "--repo", ".", "--print-config", cwd=repo)
    assert inside.returncode == 0, inside.stderr
    assert '"m1"' in inside.stdout and '"CI_DEPLOY"' not in inside.stdout
    assert "`token_env` ignored" in inside.stderr


def test_unknown_variables_warn_and_unknown_keys_fail_with_a_suggestion(tmp_path: Path) -> None:
    warned = gpuflow("run", "--print-config", env={"GPUFLOW_JOB": "2"})
    assert warned.returncode == 0
    assert "GPUFLOW_JOB is not a gpuflow variable" in warned.stderr and "'GPUFLOW_JOBS'" in warned.stderr
    (tmp_path / "gpuflow.toml").write_text("notebok = 'a.ipynb'\n")
    bad = gpuflow("run", "--print-config", cwd=tmp_path)
    assert bad.returncode == 2
    assert "unknown option 'notebok' (did you mean 'notebooks'?)" in bad.stderr.strip().splitlines()[-1]
