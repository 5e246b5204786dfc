"""gpuflow.clone against real git servers (git http-backend behind http.server)."""
from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from gpuflow import clone
from gpuflow.core import backup
from gpuflow.core.errors import AuthError, CloneError, UnsafePathError

from .conftest import History, git, publish

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ghp_TESTtoken0123456789abcdefSECRET"


def head(path: Path) -> str:
    return git("rev-parse", "HEAD", cwd=path)


def tree_snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "gpuflow.clone", *args], capture_output=True, text=True,
                          env=full_env, timeout=120)


@pytest.fixture
def served(git_server: Any, history: History) -> Any:
    srv = git_server()
    publish(history.path, srv.root)
    return srv


@pytest.mark.parametrize("revision, depth", [
    (None, None), ("main", 1), ("feature", 2), ("v1.0", 1), ("full-sha", 1), ("short-sha", None),
])
def test_revision_checks_out_exactly_that_commit(served: Any, history: History, tmp_path: Path,
                                                 revision: str | None, depth: int | None) -> None:
    expected = {None: history.commits[-1], "main": history.commits[-1], "feature": history.feature,
                "v1.0": history.tag, "full-sha": history.commits[20], "short-sha": history.commits[20]}[revision]
    rev = {"full-sha": history.commits[20], "short-sha": history.commits[20][:8]}.get(revision or "", revision)
    result = clone.clone(served.url("repo.git"), tmp_path / "out", revision=rev, depth=depth, retries=0)
    assert result.commit == expected == head(tmp_path / "out")
    assert result.attempts == 1 and result.backup_path is None


@pytest.mark.parametrize("short", [False, True])
def test_sha_outside_the_shallow_fetch(served: Any, history: History, tmp_path: Path, short: bool) -> None:
    old = history.commits[2]  # 27 commits behind the tip: not in a depth-1 fetch
    result = clone.clone(served.url("repo.git"), tmp_path / "out", revision=old[:7] if short else old, depth=1)
    assert result.commit == old == head(tmp_path / "out")


def test_local_path_and_sparse(history: History, tmp_path: Path) -> None:
    result = clone.clone(str(history.path), tmp_path / "out", revision="feature", sparse=["sub"])
    assert result.commit == history.feature
    assert (tmp_path / "out/sub/only.txt").is_file()
    assert not (tmp_path / "out/docs").exists()


def test_submodules(git_server: Any, history: History, tmp_path: Path) -> None:
    srv = git_server()
    publish(history.path, srv.root, "lib.git")
    parent = tmp_path / "parent"
    parent.mkdir()
    git("init", "-q", "-b", "main", cwd=parent)
    git("submodule", "add", "-q", srv.url("lib.git"), "lib", cwd=parent)
    git("commit", "-q", "-m", "with submodule", cwd=parent)
    publish(parent, srv.root, "parent.git")
    clone.clone(srv.url("parent.git"), tmp_path / "out", submodules=True)
    assert head(tmp_path / "out/lib") == history.commits[-1]
    assert (tmp_path / "out/lib/count.txt").read_text() == "29\n"


@pytest.mark.parametrize("fault", ["unavailable", "reset"])
def test_transient_failures_are_retried(git_server: Any, history: History, tmp_path: Path, fault: str) -> None:
    srv = git_server(**{fault: 2})
    publish(history.path, srv.root)
    result = clone.clone(srv.url("repo.git"), tmp_path / "out", retries=3, backoff=0.01)
    assert result.attempts == 3
    assert result.commit == history.commits[-1]


def test_connection_refused_is_transient_and_restores_dest(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("precious")
    proc = run_cli("http://127.0.0.1:9/repo.git", str(dest), "--retries", "2", "--backoff", "0.01")
    assert proc.returncode == 3
    assert proc.stderr.count("retrying") == 2
    assert tree_snapshot(dest) == {"keep.txt": b"precious"}
    assert backup.backups_of(dest) == []


def test_final_failure_restores_backup_exactly(git_server: Any, history: History, tmp_path: Path) -> None:
    srv = git_server(unavailable=100)
    publish(history.path, srv.root)
    dest = tmp_path / "out"
    clone.clone(str(history.path), dest)
    (dest / "local-change.txt").write_text("work in progress")
    before = tree_snapshot(dest)
    with pytest.raises(CloneError, match="HTTP 5xx"):
        clone.clone(srv.url("repo.git"), dest, retries=2, backoff=0.01)
    assert tree_snapshot(dest) == before
    assert backup.backups_of(dest) == []


@pytest.mark.parametrize("url_suffix, revision, match", [
    ("missing.git", None, "repository not found"),
    ("repo.git", "no-such-branch", "not found"),
])
def test_permanent_failures_fail_at_once(served: Any, tmp_path: Path, url_suffix: str, revision: str | None,
                                         match: str) -> None:
    args = [served.url(url_suffix), str(tmp_path / "out"), "--retries", "3", "--backoff", "0.01"]
    proc = run_cli(*args, *(["--revision", revision] if revision else []))
    assert proc.returncode == 3
    assert "retrying" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gpuflow.clone: ") and match in last
    assert not (tmp_path / "out").exists()


def test_results_on_failure(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = run_cli("http://user:hunter2-secret@127.0.0.1:9/x.git", str(tmp_path / "out"), "--retries", "0",
                   "--results-dir", str(results))
    assert proc.returncode == 3 and "hunter2" not in proc.stderr
    files = {p.name: p.read_text() for p in results.iterdir() if p.is_file()}
    assert files == {"commit-sha": "", "url": "http://127.0.0.1:9/x.git", "backup-path": "",
                     "clone-status": "failed"}
    record = (results / "steps/clone.json").read_text()
    assert '"exit_code": 3' in record and "hunter2" not in record


def test_home_and_its_parents_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for dest in (home, tmp_path / "home"):
        with pytest.raises(UnsafePathError):
            clone.clone("http://127.0.0.1:9/x.git", dest)
    monkeypatch.delenv("HOME")
    with pytest.raises(CloneError):  # no HOME at all (an arbitrary container UID): still works
        clone.clone("http://127.0.0.1:9/x.git", tmp_path / "out", retries=0)


def _watch_argv(stop: threading.Event, seen: list[str]) -> None:
    while not stop.is_set():
        for p in psutil.process_iter(["cmdline"]):
            seen.append(" ".join(p.info["cmdline"] or []))
        time.sleep(0.01)  # git's children live for ~0.1 s: sampled often enough, without hogging a core


def test_token_never_leaks(git_server: Any, history: History, tmp_path: Path) -> None:
    srv = git_server(token=TOKEN)
    publish(history.path, srv.root)
    shim = tmp_path / "shim"
    shim.mkdir()
    argv_log = tmp_path / "argv.log"
    real_git = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True).stdout.strip()
    (shim / "git").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{argv_log}"\nexec "{real_git}" "$@"\n')
    (shim / "git").chmod(0o755)
    results, dest = tmp_path / "results", tmp_path / "out"
    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_argv, args=(stop, seen))
    watcher.start()
    try:
        proc = run_cli(srv.url("repo.git"), str(dest), "--token-env", "MY_TOKEN", "--results-dir", str(results),
                       "--debug", env={"MY_TOKEN": TOKEN, "PATH": f"{shim}:{os.environ['PATH']}"})
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == history.commits[-1]
    assert srv.url("repo.git") in argv_log.read_text()  # the shim did see the transfer's argv (clone or fetch)
    assert any("git fetch" in line or "git clone" in line for line in seen)  # the watcher did catch git's children
    import base64
    encoded = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    haystacks = {"stdout": proc.stdout, "stderr": proc.stderr, "argv": argv_log.read_text(), "ps": "\n".join(seen)}
    for root in (dest, results):
        for path in root.rglob("*"):
            if path.is_file():
                haystacks[str(path)] = path.read_bytes().decode("latin-1")
    for where, text in haystacks.items():
        assert TOKEN not in text and encoded not in text, f"token leaked into {where}"
    assert git("config", "remote.origin.url", cwd=dest) == srv.url("repo.git")


def test_token_in_url_moves_to_header(git_server: Any, history: History, tmp_path: Path) -> None:
    srv = git_server(token=TOKEN)
    publish(history.path, srv.root)
    url = srv.url("repo.git").replace("http://", f"http://x-access-token:{TOKEN}@")
    result = clone.clone(url, tmp_path / "out")
    assert TOKEN not in result.url and TOKEN not in (tmp_path / "out/.git/config").read_text()


def test_bad_token_fails_at_once(git_server: Any, history: History, tmp_path: Path) -> None:
    srv = git_server(token=TOKEN)
    publish(history.path, srv.root)
    proc = run_cli(srv.url("repo.git"), str(tmp_path / "out"), "--retries", "3", "--backoff", "0.01",
                   env={"GITHUB_TOKEN": "wrong-token-value"})
    assert proc.returncode == 3
    assert "retrying" not in proc.stderr and "wrong-token-value" not in proc.stderr
    assert "authentication" in proc.stderr.strip().splitlines()[-1]
    with pytest.raises(AuthError):
        clone.clone(srv.url("repo.git"), tmp_path / "out2", token_file=_write(tmp_path / "tok", "nope-nope"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_backup_reported_and_results_files(history: History, tmp_path: Path) -> None:
    dest, results = tmp_path / "out", tmp_path / "results"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    proc = run_cli(str(history.path), str(dest), "--revision", "v1.0", "--results-dir", str(results))
    assert proc.returncode == 0, proc.stderr
    files = {p.name: p.read_text() for p in results.iterdir() if p.is_file()}
    assert files["commit-sha"] == history.tag == proc.stdout.splitlines()[-1]
    assert files["clone-status"] == "success" and files["url"] == str(history.path)
    backup_dir = Path(files["backup-path"])
    assert backup_dir.name.startswith("out_backup_") and (backup_dir / "old.txt").read_text() == "old"
    assert (results / "steps/clone.json").is_file()


def test_no_backup_deletes(history: History, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    result = clone.clone(str(history.path), dest, backup=False)
    assert result.backup_path is None and not (dest / "old.txt").exists()
    assert backup.backups_of(dest) == []


def test_prune_old_backups(history: History, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    now = _dt.datetime.now(_dt.timezone.utc)
    for days in (1, 3, 10, 30):
        stamp = (now - _dt.timedelta(days=days)).strftime("%Y%m%dT%H%M%SZ")
        (tmp_path / f"out_backup_{stamp}").mkdir()
    (tmp_path / "out_backup_notadate").mkdir()  # not ours: left alone
    dest.mkdir()
    (dest / "x").write_text("x")
    result = clone.clone(str(history.path), dest, keep_backups=3, max_backup_age=7)
    left = sorted(p.name for p in backup.backups_of(dest))
    assert backup.prune(dest, keep=None, max_age_days=2) != []  # now the 3-day-old one goes too
    assert len(backup.backups_of(dest)) == 2
    assert result.backup_path is not None and result.backup_path.name in left
    assert len(left) == 3  # the new one, 1 and 3 days old; 10 and 30 days are past both limits
    assert (tmp_path / "out_backup_notadate").is_dir()


def test_mount_point_contents_are_moved_never_the_dir(history: History, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(workspace)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        (workspace / "old.txt").write_text("old")
        result = clone.clone(str(history.path), workspace)
        assert os.path.ismount(workspace)
        assert result.backup_path is not None and (result.backup_path / "old.txt").read_text() == "old"
        assert not (workspace / "old.txt").exists() and head(workspace) == history.commits[-1]
        with pytest.raises(CloneError):
            clone.clone(str(history.path), workspace, revision="nope", backup=True)
        assert os.path.ismount(workspace) and head(workspace) == history.commits[-1]
    finally:
        if subprocess.run(["umount", str(workspace)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(workspace)], check=False)


@pytest.mark.parametrize("where", ["root", "cwd-ancestor"])
def test_refuses_unsafe_dest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    dest = Path("/") if where == "root" else tmp_path / "a"
    with pytest.raises(UnsafePathError):
        clone.clone("http://127.0.0.1:9/x.git", dest)
    assert inner.is_dir()
    assert clone.main(["http://127.0.0.1:9/x.git", str(dest)]) == 2


def test_inherited_git_env_of_a_hook_is_neutralised(history: History, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    git("init", "-q", cwd=other)
    before = tree_snapshot(other / ".git")
    # what a git hook's environment looks like: it points at another repository
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other / ".git/index"))
    result = clone.clone(str(history.path), tmp_path / "out", revision="feature")
    assert result.commit == history.feature
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    monkeypatch.delenv("GIT_INDEX_FILE")
    assert head(tmp_path / "out") == history.feature and tree_snapshot(other / ".git") == before
