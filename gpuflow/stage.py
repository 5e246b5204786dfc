"""Stage the executed notebook's HTML into a test repo's input folder.

The repo comes from the clone step (a URL) or a copy of a local directory.
Only the contents of the input folder are removed, never the folder itself,
never anything outside it and never through a symlink: the old workflows ran
`rm -rf input/*` in a repo they had just downloaded.
"""
from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from gpuflow.core import errors, tables
from gpuflow.core.fsutil import atomic_path, clear_contents, contained
from gpuflow.core.log import log
from gpuflow.core.step import Step

# left in a directory we copied, so that a later run may replace it
COPY_MARKER = ".gpuflow-copy"


@dataclass(frozen=True, kw_only=True)
class RepoResult:
    source: str
    path: Path
    commit: str | None
    copied: bool
    duration_s: float

    def __str__(self) -> str:
        return f"{self.source} -> {self.path}" + (f" ({self.commit[:12]})" if self.commit else "")

    def _repr_html_(self) -> str:
        return tables.dataclass_table(self)


@dataclass(frozen=True, kw_only=True)
class StageResult:
    html: Path
    repo: str
    dest: Path
    target: Path
    commit: str | None
    duration_s: float

    def __str__(self) -> str:
        return f"{self.html.name} -> {self.target}"

    def _repr_html_(self) -> str:
        return tables.dataclass_table(self)


def fetch_repo(
    repo: str, dest: Path, *, revision: str | None = None, token_env: str | None = None,
) -> RepoResult:
    """Get the test repo into `dest`: clone a URL (or a local repo at a
    `revision`) with `gpuflow.clone`, or copy a local directory."""
    dest = Path(dest)
    t0 = time.monotonic()
    source = Path(repo).expanduser()
    if source.is_dir() and revision is None:
        here, there = source.resolve(), dest.resolve()
        if here == there or here in there.parents or there in here.parents:
            # emptying DEST before the copy would empty the test repo itself
            raise errors.UnsafePathError(f"--dest {dest} overlaps the test repo {repo}; choose a separate --dest")
        _copy_tree(source, dest)
        return RepoResult(source=repo, path=dest, commit=None, copied=True,
                          duration_s=round(time.monotonic() - t0, 3))
    from gpuflow.clone import clone  # lazy: GitPython is only needed for a clone

    result = clone(repo, dest, revision=revision, token_env=token_env)
    return RepoResult(source=repo, path=dest, commit=result.commit, copied=False,
                      duration_s=round(time.monotonic() - t0, 3))


def _copy_tree(source: Path, dest: Path) -> None:
    if dest.exists() and any(dest.iterdir()):
        if not (dest / COPY_MARKER).is_file() or dest.is_symlink():
            raise errors.ConfigError(f"{dest} exists and is not empty; remove it or choose another --dest")
        clear_contents(dest)
    # symlinks=True: copy links as links, never what they point to
    shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)
    (dest / COPY_MARKER).write_text(f"copied from {source}\n", encoding="utf-8")


def _input_folder(dest: Path, input_dir: str) -> Path:
    folder = contained(dest, input_dir)
    if folder.resolve() == dest.resolve():
        # the input folder is emptied before staging: never the whole repo
        raise errors.UnsafePathError(f"--input-dir {input_dir!r} is the test repo itself; name a folder inside it")
    if folder.is_symlink():
        # emptying it would empty whatever it points to
        raise errors.UnsafePathError(f"{input_dir!r} in {dest} is a symlink; refusing to empty it")
    if folder.exists() and not folder.is_dir():
        raise errors.UnsafePathError(f"{folder} is not a directory")
    return folder


def place_html(html: Path, dest: Path, *, input_dir: str = "input", name: str | None = None) -> Path:
    """Empty `dest/input_dir` and copy `html` to `dest/input_dir/name`."""
    html, dest = Path(html), Path(dest)
    if not html.is_file():
        raise errors.InputError(f"{html}: no such HTML file")
    folder = _input_folder(dest, input_dir)
    rel = name if name is not None else html.name
    # check the name before deleting anything: bad input loses nothing
    contained(folder, rel)
    folder.mkdir(parents=True, exist_ok=True)
    clear_contents(folder)
    target = contained(folder, rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(html, tmp)
    return target


def stage(
    html: Path, repo: str, dest: Path, *, input_dir: str = "input", name: str | None = None,
    revision: str | None = None, token_env: str | None = None,
) -> StageResult:
    """Get the test repo (`fetch_repo`) and place the HTML in it (`stage_into`)."""
    t0 = time.monotonic()
    if not Path(html).is_file():
        raise errors.InputError(f"{html}: no such HTML file")
    # refuse an escaping name before spending a clone on it
    contained(Path(dest) / input_dir, name if name is not None else Path(html).name)
    got = fetch_repo(repo, dest, revision=revision, token_env=token_env)
    result = stage_into(html, got, input_dir=input_dir, name=name)
    return replace(result, duration_s=round(time.monotonic() - t0, 3))


def stage_into(html: Path, got: RepoResult, *, input_dir: str = "input", name: str | None = None) -> StageResult:
    """Place the HTML in a repo `fetch_repo` already got: `gpuflow run` gets
    each notebook's copy while the notebook executes."""
    t0 = time.monotonic()
    target = place_html(html, got.path, input_dir=input_dir, name=name)
    return StageResult(html=Path(html), repo=got.source, dest=got.path, target=target, commit=got.commit,
                       duration_s=round(time.monotonic() - t0, 3))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--html", type=Path, required=True, help="the notebook HTML to stage")
    p.add_argument("--repo", required=True, help="test repo: a git URL, or a local directory to copy")
    p.add_argument("--dest", type=Path, required=True, help="where the test repo goes")
    p.add_argument("--input-dir", default="input", help="folder inside the repo for the HTML (default: input)")
    p.add_argument("--name", default=None,
                   help="relative path of the HTML inside the input folder (default: its basename)")
    p.add_argument("--revision", default=None, help="branch, tag or commit to clone")
    p.add_argument("--token-env", default=None, help="environment variable holding a token for the clone")


def _call(args: argparse.Namespace) -> StageResult:
    result = stage(args.html, args.repo, args.dest, input_dir=args.input_dir, name=args.name,
                   revision=args.revision, token_env=args.token_env)
    log.info(f"staged {result}")
    return result


STEP = Step(
    name="stage", description="Put the notebook HTML into a test repo's input folder.",
    add_arguments=add_arguments, call=_call, stdout=lambda result: result.target,
    details=lambda result: {"target": str(result.target), "dest": str(result.dest), "commit": result.commit},
    record_dir=lambda a: a.record_dir or Path(a.html).parent,
)


def main(argv: Sequence[str] | None = None) -> int:
    return STEP.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
