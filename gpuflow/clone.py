"""`python -m gpuflow.clone URL DEST`: clone a git repo at exactly one commit,
with retries, a backup of what was at DEST, and a token kept out of argv,
URLs and `.git/config`.

The last stdout line is the commit SHA. Exit 3 when the network, the auth or
the revision fails (after retries where retrying can help), 2 for bad usage.
"""
from __future__ import annotations

import argparse
import base64
import os
import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuflow.core import backup as backups
from gpuflow.core import secrets, tables
from gpuflow.core.errors import AuthError, CloneError, ConfigError, InfraError, InputError
from gpuflow.core.fsutil import write_results
from gpuflow.core.log import add_secret, log, redact
from gpuflow.core.retry import Backoff, with_retries
from gpuflow.core.step import Step

if TYPE_CHECKING:
    import git

# Inherited GIT_* variables that say *how* to reach a remote are kept, as in
# pre-commit's no_git_env; those that say *which repo* (GIT_DIR, GIT_INDEX_FILE,
# set when running inside a hook) would make git act on the wrong repository.
_KEEP_GIT_ENV = (
    "GIT_CONFIG", "GIT_ASKPASS", "GIT_SSH", "GIT_SSL_", "GIT_HTTP_", "GIT_PROXY_", "GIT_TERMINAL_PROMPT",
    "GIT_ALLOW_PROTOCOL", "GIT_PROTOCOL_FROM_USER", "GIT_AUTHOR_", "GIT_COMMITTER_", "GIT_EXEC_PATH",
)

# git's stderr (a regex) -> (permanent?, what a person should do). First match wins.
_HINTS: tuple[tuple[str, bool, str], ...] = (
    ("authentication failed", True, "authentication failed: check the token (--token-env / --token-file) "
     "and that it can read this repository"),
    ("could not read username", True, "authentication failed: the server wants credentials; pass a token "
     "with --token-env or --token-file, or check the one given"),
    ("could not read password", True, "authentication failed: the server rejected the credentials"),
    ("returned error: 401", True, "authentication failed: pass a token with --token-env or --token-file"),
    ("returned error: 403", True, "access denied: the token cannot read this repository"),
    ("repository not found", True, "repository not found: check the URL (or the token's access)"),
    ("repository '.*' not found", True, "repository not found: check the URL"),
    ("returned error: 404", True, "repository not found: check the URL"),
    ("does not appear to be a git repository", True, "not a git repository: check the URL"),
    ("couldn't find remote ref", True, "revision not found on the remote"),
    ("remote branch .* not found", True, "revision not found on the remote"),
    ("ssl certificate problem", True, "TLS certificate problem: set GIT_SSL_CAINFO to the right CA bundle"),
    ("returned error: 5", False, "the server had an error (HTTP 5xx)"),
    ("connection refused", False, "connection refused"),
    ("connection reset", False, "connection reset"),
    ("timed out", False, "the connection timed out"),
    ("operation too slow", False, "the transfer stalled"),
    ("could not resolve host", False, "could not resolve the host name"),
    ("failed to connect", False, "could not connect"),
    ("early eof", False, "the connection dropped"),
    ("empty reply from server", False, "the connection dropped"),
    ("recv failure", False, "the connection dropped"),
    ("send failure", False, "the connection dropped"),
    ("the remote end hung up", False, "the connection dropped"),
    ("rpc failed", False, "the transfer failed"),
)


# an abbreviated or full SHA: `git clone --branch` cannot take one
_LOOKS_LIKE_SHA = re.compile(r"[0-9a-fA-F]{7,40}")


class _Transient(CloneError):
    """A failure worth another try."""


class _RevisionMissing(CloneError):
    """The remote has no ref of that name; it may still be a (short) SHA."""


@dataclass(frozen=True, kw_only=True)
class CloneResult:
    url: str
    path: Path
    commit: str
    revision: str | None
    backup_path: Path | None
    duration_s: float
    attempts: int

    def __str__(self) -> str:
        return f"{self.url} @ {self.revision or 'HEAD'} -> {self.path} ({self.commit[:12]})"

    def _repr_html_(self) -> str:
        return tables.dataclass_table(self)


def clone(
    url: str,
    dest: Path,
    *,
    revision: str | None = None,
    depth: int | None = None,
    submodules: bool = False,
    sparse: Sequence[str] = (),
    retries: int = 3,
    backoff: float = 2.0,
    backup: bool = True,
    keep_backups: int | None = None,
    max_backup_age: float | None = None,
    token_env: str | None = None,
    token_file: Path | None = None,
) -> CloneResult:
    """Clone `url` into `dest` and check out exactly `revision` (a branch, tag,
    or full or abbreviated SHA; default the remote HEAD).

    What was at `dest` is moved to `<dest>_backup_<UTC stamp>` (or deleted
    with backup=False) and put back if the clone fails. Transient failures are
    retried `retries` times with exponential backoff and jitter.
    """
    start = time.monotonic()
    dest = Path(dest).absolute()
    if depth is not None and depth < 1:
        raise ConfigError(f"--depth must be at least 1, not {depth}")
    backups.refuse_unsafe(dest)
    remote, env = _remote_and_env(url, dest, token_env=token_env, token_file=token_file)
    aside = backups.set_aside(dest, keep=backup)
    attempts = 0

    def attempt(n: int) -> str:
        nonlocal attempts
        attempts = n
        return _clone_once(remote, dest, env, revision=revision, depth=depth,
                           submodules=submodules, sparse=sparse)

    try:
        with log.step(f"clone {redact(remote)}"):
            commit = with_retries(
                attempt, policy=Backoff(attempts=retries + 1, base=backoff),
                transient=lambda exc: isinstance(exc, _Transient), what="clone",
                between=lambda exc: backups.wipe(dest),
            )
    except BaseException:
        backups.restore(aside)
        raise
    if keep_backups is not None or max_backup_age is not None:
        backups.prune(dest, keep=keep_backups, max_age_days=max_backup_age)
    return CloneResult(url=remote, path=dest, commit=commit, revision=revision, backup_path=aside.backup,
                       duration_s=round(time.monotonic() - start, 3), attempts=attempts)


def strip_credentials(url: str) -> str:
    """`url` without `user:password@`, so it can be logged or stored."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


def _remote_and_env(url: str, dest: Path, *, token_env: str | None,
                    token_file: Path | None) -> tuple[str, dict[str, str]]:
    parts = urllib.parse.urlsplit(url)
    remote = strip_credentials(url)
    if not parts.scheme and Path(url).exists():  # a local path, relative to the cwd of the caller
        remote = str(Path(url).absolute())
    token = _read_token(token_env, token_file, parts.hostname) or parts.password
    env = scrubbed_env(os.environ, dest)
    if token and parts.scheme in ("http", "https"):
        add_secret(token)
        prefix = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/"
        add_auth_header(env, prefix, token)
    return remote, env


def _read_token(token_env: str | None, token_file: Path | None, host: str | None = None) -> str | None:
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(f"cannot read --token-file {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise InputError(f"--token-file {token_file} is empty")
        return token
    # GITHUB_TOKEN unasked goes only to GitHub's own host: a repo URL that
    # names another host must not receive it
    implicit = os.environ.get("GITHUB_TOKEN") and host == github_host()
    name = token_env or ("GITHUB_TOKEN" if implicit else None)
    if name is None:
        return None
    token = os.environ.get(name, "").strip()
    if not token:
        raise ConfigError(f"--token-env {name}: the variable is not set or empty")
    secrets.declare(name)
    return token


def github_host() -> str:
    """The host GITHUB_TOKEN belongs to: github.com, or the GitHub server of this CI run."""
    return urllib.parse.urlsplit(os.environ.get("GITHUB_SERVER_URL") or "https://github.com").hostname or ""


def scrubbed_env(environ: Mapping[str, str], dest: Path) -> dict[str, str]:
    """The environment for git in `dest`: inherited GIT_* variables are
    neutralised except the ones that configure transport and auth; never a
    terminal prompt.

    GitPython starts every child from a copy of os.environ and only lays our
    dict over it, so a variable cannot be removed: the ones that say which
    repository to act on are pinned to `dest` instead, the rest emptied.
    """
    gitdir = dest / ".git"
    pinned = {"GIT_DIR": gitdir, "GIT_WORK_TREE": dest, "GIT_COMMON_DIR": gitdir,
              "GIT_INDEX_FILE": gitdir / "index", "GIT_OBJECT_DIRECTORY": gitdir / "objects"}
    env = dict(environ)
    for key in environ:
        if key.startswith("GIT_") and not key.startswith(_KEEP_GIT_ENV):
            env[key] = str(pinned.get(key, ""))
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GCM_INTERACTIVE"] = "never"
    # a stalled transfer fails (and is retried) instead of hanging the step
    _add_config(env, "http.lowSpeedLimit", "1000")
    _add_config(env, "http.lowSpeedTime", "60")
    return env


def add_auth_header(env: dict[str, str], url_prefix: str, token: str) -> None:
    """Give git the token as an HTTP header through its environment
    (GIT_CONFIG_COUNT/KEY/VALUE), scoped to the one host, so it never lands
    in argv, a remote URL or .git/config."""
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode("ascii")
    add_secret(basic)
    _add_config(env, f"http.{url_prefix}.extraHeader", f"Authorization: Basic {basic}")


def _add_config(env: dict[str, str], key: str, value: str) -> None:
    n = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
    env[f"GIT_CONFIG_KEY_{n}"] = key
    env[f"GIT_CONFIG_VALUE_{n}"] = value
    env["GIT_CONFIG_COUNT"] = str(n + 1)


def _clone_once(remote: str, dest: Path, env: dict[str, str], *, revision: str | None, depth: int | None,
                submodules: bool, sparse: Sequence[str]) -> str:
    import git  # GitPython: imported here so `import gpuflow.clone` stays cheap

    # Each git child costs 10-60 ms, as much as a shallow fetch, so the common
    # case (a branch or tag, no sparse paths) is one `git clone`; a SHA or a
    # sparse checkout takes init + fetch + checkout. GitPython does in-process
    # what it can (the remote's config, reading HEAD).
    dest.mkdir(parents=True, exist_ok=True)
    runner = git.Git(str(dest))
    runner.update_environment(**env)
    # an inherited GIT_DIR/GIT_WORK_TREE (a hook's) is pinned to DEST, and `git clone` refuses a preset work tree
    pinned = any(env.get(key) for key in ("GIT_DIR", "GIT_WORK_TREE"))
    if not sparse and not pinned and not (revision and _LOOKS_LIKE_SHA.fullmatch(revision)):
        try:
            return _clone_ref(runner, remote, dest, env, revision=revision, depth=depth, submodules=submodules)
        except _RevisionMissing:
            backups.wipe(dest)  # not a branch or tag: maybe an abbreviated SHA after all
            dest.mkdir(parents=True, exist_ok=True)
    _git(runner, "init", "-q")  # not Repo.init: that would run `git init` without our environment
    repo = git.Repo(dest)
    try:
        repo.git.update_environment(**env)
        with repo.config_writer() as config:  # what `git remote add origin URL` writes
            config.set_value('remote "origin"', "url", remote)
            config.set_value('remote "origin"', "fetch", "+refs/heads/*:refs/remotes/origin/*")
        target = _fetch_revision(repo, revision, depth)
        if sparse:
            _git(repo.git, "sparse-checkout", "set", "--", *sparse)
        _git(repo.git, "checkout", "-q", "--detach", target)  # peels an annotated tag to its commit
        return _finish(repo, depth=depth, submodules=submodules)
    finally:
        repo.close()  # ends GitPython's persistent cat-file children, if any, which would keep DEST busy


def _clone_ref(runner: git.Git, remote: str, dest: Path, env: dict[str, str], *, revision: str | None,
               depth: int | None, submodules: bool) -> str:
    import git

    shallow = [f"--depth={depth}"] if depth else []
    branch = ["--branch", revision] if revision else []
    # --no-local: a plain path goes through git's transport too, so --depth holds
    _git(runner, "clone", "-q", "--no-local", "--no-tags", *shallow, *branch, "--", remote, str(dest))
    repo = git.Repo(dest)
    try:
        repo.git.update_environment(**env)
        if not repo.head.is_detached:  # a branch: leave HEAD at the commit, as the fetch path does
            _git(repo.git, "checkout", "-q", "--detach")
        return _finish(repo, depth=depth, submodules=submodules)
    finally:
        repo.close()


def _finish(repo: git.Repo, *, depth: int | None, submodules: bool) -> str:
    from git.refs import SymbolicReference

    if submodules:
        extra = [f"--depth={depth}"] if depth else []
        _git(repo.git, "submodule", "update", "--init", "--recursive", *extra)
    # read from .git/HEAD: repo.head.commit would start a cat-file child
    return str(SymbolicReference.dereference_recursive(repo, "HEAD"))


def _fetch_revision(repo: git.Repo, revision: str | None, depth: int | None) -> str:
    """Fetch `revision` and return what to check out: FETCH_HEAD on the
    common path (a ref name or a SHA the server hands out), else a SHA."""
    shallow = [f"--depth={depth}"] if depth else []
    try:
        _git(repo.git, "fetch", "-q", "--no-tags", *shallow, "origin", revision or "HEAD")
        return "FETCH_HEAD"
    except _RevisionMissing:
        if revision is None:
            raise
    # Not a ref name and not a SHA the server hands out directly: an
    # abbreviated SHA, say. Fetch every branch and tag and look for it,
    # deepening to the full history if the shallow one lacks it.
    refspecs = ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"]
    _git(repo.git, "fetch", "-q", *shallow, "origin", *refspecs)
    found = _resolve(repo, revision)
    if found is None and depth:
        _git(repo.git, "fetch", "-q", "--unshallow", "origin", *refspecs)
        found = _resolve(repo, revision)
    if found is None:
        raise CloneError(f"revision {revision!r} not found in {redact(str(repo.remotes.origin.url))}")
    return found


def _resolve(repo: git.Repo, revision: str) -> str | None:
    import git

    for candidate in (f"origin/{revision}", revision):
        try:
            return str(repo.git.rev_parse("--verify", "-q", f"{candidate}^{{commit}}"))
        except git.GitCommandError:
            continue
    return None


def _git(runner: git.Git, *args: str) -> Any:
    import git

    log.debug(f"+ git {redact(' '.join(args))}")
    try:
        return runner.execute(["git", *args])
    except git.GitCommandError as exc:
        raise _classify(exc) from None


def _classify(exc: Any) -> InfraError:
    stderr = str(getattr(exc, "stderr", "") or "")
    lowered = stderr.lower()
    lines = [line.strip().removeprefix("stderr: '").rstrip("'") for line in stderr.splitlines() if line.strip()]
    detail = redact(lines[-1] if lines else str(exc).strip())
    for needle, permanent, hint in _HINTS:
        if re.search(needle, lowered):
            if hint == "revision not found on the remote":
                return _RevisionMissing(f"{hint} ({detail})")
            if not permanent:
                return _Transient(f"{hint} ({detail})")
            cls = AuthError if hint.startswith(("authentication", "access denied")) else CloneError
            return cls(f"{hint} ({detail})")
    return CloneError(f"git failed: {detail}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="https://, ssh, file:// URL or a local path")
    p.add_argument("dest", type=Path, help="where to check out; an existing DEST is backed up")
    p.add_argument("--revision", default=None, help="branch, tag, or full or abbreviated SHA (default: HEAD)")
    p.add_argument("--depth", type=int, default=None, help="shallow fetch of N commits")
    p.add_argument("--submodules", action="store_true", help="also check out submodules, recursively")
    p.add_argument("--sparse", nargs="+", default=[], metavar="PATH", help="sparse checkout of these paths")
    p.add_argument("--retries", type=int, default=3, help="retries after the first try (transient errors only)")
    p.add_argument("--backoff", type=float, default=2.0, help="first retry wait in seconds; doubles each time")
    p.add_argument("--no-backup", action="store_true", help="delete an existing DEST instead of moving it aside")
    p.add_argument("--keep-backups", type=int, default=None, metavar="N", help="keep only the newest N backups")
    p.add_argument("--max-backup-age", type=float, default=None, metavar="DAYS", help="delete older backups")
    p.add_argument("--token-env", default=None, metavar="NAME", help="env var holding the token "
                   "(default: GITHUB_TOKEN when set)")
    p.add_argument("--token-file", type=Path, default=None, help="file holding the token (a mounted secret)")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="write Tekton results commit-sha, url, backup-path, clone-status here")


def _call(args: argparse.Namespace) -> CloneResult:
    results: dict[str, str] = {"commit-sha": "", "url": redact(strip_credentials(args.url)),
                               "backup-path": "", "clone-status": "failed"}
    try:
        # the results and record land beside the checkout, never inside what it replaces
        backups.refuse_unsafe(args.dest, keep=[d for d in (args.results_dir, args.record_dir) if d is not None])
        result = clone(args.url, args.dest, revision=args.revision, depth=args.depth, submodules=args.submodules,
                       sparse=args.sparse, retries=args.retries, backoff=args.backoff, backup=not args.no_backup,
                       keep_backups=args.keep_backups, max_backup_age=args.max_backup_age,
                       token_env=args.token_env, token_file=args.token_file)
        results.update({"commit-sha": result.commit, "backup-path": str(result.backup_path or ""),
                        "clone-status": "success"})
    finally:
        if args.results_dir is not None:
            write_results(args.results_dir, results)
    log.info(str(result))
    return result


STEP = Step(
    name="clone", description="Clone a git repo at an exact revision, with retries and backups.",
    add_arguments=add_arguments, call=_call, stdout=lambda result: result.commit,
    details=lambda result: {"url": result.url, "path": str(result.path), "commit": result.commit,
                            "revision": result.revision, "backup_path": str(result.backup_path or ""),
                            "attempts": result.attempts},
    record_dir=lambda a: a.record_dir or a.results_dir,
)


def main(argv: Sequence[str] | None = None) -> int:
    return STEP.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
