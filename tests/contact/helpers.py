"""A new user's first steps, as they take them: their own folder outside the
checkout, `gpuflow` on the command line, notebooks they wrote."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def write_notebook(path: Path, *sources: str, kernelspec: dict[str, str] | None = None) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(s[3:]) if s.startswith("md:") else nbformat.v4.new_code_cell(s)
                for s in sources]
    nb.metadata["kernelspec"] = kernelspec if kernelspec is not None else {
        "name": "python3", "language": "python", "display_name": "Python 3"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1))  # as written: a kernelspec off the schema stays so
    return path


def gpuflow(*args: str, cwd: Path, env: dict[str, str] | None = None, pythonpath: Sequence[Path] = (ROOT,),
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`gpuflow ARGS` run from `cwd`, as a user would (this checkout first on the path)."""
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath)), **(env or {})}
    return subprocess.run([sys.executable, "-m", "gpuflow", *args], cwd=cwd, env=full, text=True,
                          capture_output=True, timeout=timeout)


def only_run_dir(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def summaries_say(run_dir: Path) -> dict[str, Any]:
    """What summary.json, STEP_SUMMARY.md and index.html say the exit code is."""
    data = json.loads((run_dir / "summary.json").read_text())
    md = (run_dir / "STEP_SUMMARY.md").read_text()
    page = (run_dir / "index.html").read_text()
    return {"json": data["exit_code"], "md": f"(exit {data['exit_code']})" in md.splitlines()[0],
            "html": f"(exit {data['exit_code']})" in page, "data": data, "md_text": md, "page": page}
