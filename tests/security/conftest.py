"""Attacks on gpuflow's trust boundaries, tried with real processes: the
reliability suite's servers and step fixtures, plus headless Chromium."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.flow.conftest import steps_present, test_repo  # noqa: F401
from tests.network.conftest import file_server, git_server, history, publish  # noqa: F401

# what a payload does when it runs: the page's title changes to this word,
# which the payload's own (escaped) text never spells out
PWNED = "PWNED" + "X"
PAYLOAD_JS = "document.title='PWNED'+'X'"


def chromium_dom(page: Path, profile: Path) -> str:
    """The DOM of `page` after headless Chromium ran its scripts. The page is
    read from a copy with a plain name: a hostile name in the path (`<`, `'`,
    newlines) must not be what keeps Chromium from loading it."""
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        pytest.skip("chromium is not installed (make test installs it when it can)")
    profile.mkdir(parents=True, exist_ok=True)
    page = Path(shutil.copyfile(page, profile / "page.html"))
    done = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert "<html" in done.stdout.lower(), done.stderr[-2000:]
    return done.stdout


def hrefs(dom: str) -> list[str]:
    return re.findall(r'href="([^"]*)"', dom)


def gpuflow(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m gpuflow ARGS` in a child process, as a runner starts it."""
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    return subprocess.run([sys.executable, "-m", "gpuflow", *args], env=full, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def everything_under(*roots: Path) -> dict[str, str]:
    found = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                found[str(path)] = path.read_bytes().decode("latin-1")
    return found
