"""Optional: @ibm/tekton-lint over the manifests, where it is installed
(`npm install -g @ibm/tekton-lint@1.1.0`). The Python checks are the primary ones."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = shutil.which("tekton-lint")


@pytest.mark.skipif(LINT is None, reason="tekton-lint (npm @ibm/tekton-lint) is not installed")
def test_tekton_lint_is_clean() -> None:
    done = subprocess.run(
        [LINT, "--config", str(Path(__file__).parent / "lint"), "--format", "json",
         "tekton/*.yaml", "tekton/runs/*.yaml", "tekton/triggers/*.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    findings = json.loads(done.stdout or "[]")
    assert findings == [] and done.returncode == 0, done.stdout + done.stderr
