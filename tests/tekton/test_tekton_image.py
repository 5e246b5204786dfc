"""The image and the manifests agree on the user, and the entrypoints stay thin."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import tekton_rules as rules

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = (ROOT / "Containerfile").read_text(encoding="utf-8")


def test_base_image_is_a_build_arg() -> None:
    assert re.search(r"^ARG BASE_TAG=25\.04-cuda12\.8-py3\.12$", CONTAINERFILE, re.M)
    assert re.search(r"^FROM nvcr\.io/nvidia/rapidsai/notebooks:\$\{BASE_TAG\}$", CONTAINERFILE, re.M)


def test_image_user_is_the_tekton_uid() -> None:
    users = re.findall(r"^USER (\S+)$", CONTAINERFILE, re.M)
    assert users[-1] == str(rules.UID)  # ends as rapids (1001), never ubuntu (1000)
    assert "GPUFLOW_UID=1001" in CONTAINERFILE and "HOME=/home/rapids" in CONTAINERFILE
    for tool in ("pytest-cov", "pytest-html", "poetry"):
        assert tool in CONTAINERFILE, f"{tool} must be installed at build time"


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
