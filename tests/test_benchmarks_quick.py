"""The benchmark harness in quick mode: it runs, prints one table, and writes
JSON of the agreed shape. Figures are not asserted (performance is
measured in benchmarks, not in timed tests)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"row", "case", "gpuflow", "baseline", "ratio", "unit", "runs", "target", "met", "note", "commands"}


def test_quick_rows_print_a_table_and_write_json(tmp_path: Path) -> None:
    # rows 1 (CLI start) and 6 (64 MiB download) are the cheap ones; the
    # others start kernels or build big repos and belong to `make bench`.
    out = tmp_path / "results.json"
    included = tmp_path / "gpu.json"
    included.write_text(json.dumps({"machine": {"gpu": "test GPU"}, "lines": [
        {"row": "8", "case": "lite flow", "gpuflow": 42.0, "runs": 1, "target": "< 60 s", "met": True}]}))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "1,6", "--out-dir", str(tmp_path / "bench"),
         "--json", str(out), "--include-json", str(included)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header == ["#", "case", "gpuflow", "baseline", "ratio", "runs", "target", "met"]
    doc = json.loads(out.read_text())
    assert {"cores", "cpu", "python"} <= set(doc["machine"])
    assert doc["quick"] is True
    rows = {line["row"] for line in doc["lines"]}
    assert rows == {"1", "6", "8"}
    for line in doc["lines"]:
        assert KEYS <= set(line), line
        assert line["met"] in (True, False, None)
    assert "test GPU" in done.stdout


def test_unknown_row_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "9"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown row" in done.stderr
