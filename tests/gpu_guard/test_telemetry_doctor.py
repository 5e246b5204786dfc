"""Telemetry's absent path and its sampler against a fake NVML; doctor's
table, JSON and exit codes through main()."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from gpuflow import doctor
from gpuflow.gpu import guard, telemetry


def test_no_nvml_no_file_no_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    out = tmp_path / "telemetry.json"
    with guard.telemetry(guard.GuardOptions(), out):
        pass
    assert not out.exists()


def test_disabled_telemetry_samples_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "sample", lambda *a, **k: pytest.fail("must not sample"))
    with guard.telemetry(guard.GuardOptions(telemetry=False), tmp_path / "t.json"):
        pass


def test_sampler_writes_summary_and_cell_rows(tmp_path: Path, fake_nvml: None) -> None:
    cells = tmp_path / "cells.jsonl"
    cells.write_text('{"cell": 1, "peak_bytes": 1024, "total_bytes": 2048}\nnot json\n')
    out = tmp_path / "telemetry.json"
    with telemetry.sample(out, cell_stats=cells, interval=0.01) as on:
        assert on
        time.sleep(0.1)
    data = json.loads(out.read_text())
    assert data["gpu"] == "Fake H100" and data["memory_total"] == 80 << 30
    assert len(data["samples"]) >= 3 and data["mean_utilization_pct"] == 50
    assert data["peak_memory_bytes"] == max(s["memory_used"] for s in data["samples"])
    assert data["cells"] == [{"cell": 1, "peak_bytes": 1024, "total_bytes": 2048}]


def test_the_cell_stats_path_goes_from_the_setup_cell_to_telemetry(tmp_path: Path, fake_nvml: None) -> None:
    opts = guard.GuardOptions()
    assert guard.cell_stats_path(opts, {"visible": False}) is None
    assert guard.cell_stats_path(guard.GuardOptions(telemetry=False), {"visible": True}) is None
    cells = guard.cell_stats_path(opts, {"visible": True})
    assert cells is not None and cells != guard.cell_stats_path(opts, {"visible": True})  # one per execute call
    src = guard.setup_cell_source(opts, {"visible": True}, cells)
    assert src is not None and f"'cell_stats': {str(cells)!r}" in src
    cells.write_text('{"cell": 2, "peak_bytes": 10, "total_bytes": 20}\n')  # as the kernel would
    out = tmp_path / "telemetry.json"
    with guard.telemetry(opts, out, cells):
        time.sleep(0.05)
    assert json.loads(out.read_text())["cells"] == [{"cell": 2, "peak_bytes": 10, "total_bytes": 20}]
    assert not cells.exists()  # read once, then removed


def test_doctor_table_and_exit_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.main(["--workspace", str(tmp_path), "--record-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("python", "papermill", "nbconvert", "ipykernel", "kernelspecs", "HOME", "workspace",
                 "/dev/shm", "ulimit memlock", "ulimit stack", "gpu"):
        assert f" {name} " in out
    assert json.loads((tmp_path / "steps" / "doctor.json").read_text())["exit_code"] == 0


def test_doctor_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.main(["--json", "--workspace", str(tmp_path), "--gpu", "off"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [f["name"] for f in data["facts"]]
    assert "kernelspecs" in names and "gpu" not in names and data["exit_code"] == 0


def test_doctor_unwritable_workspace_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a directory cannot be made under a file, even as root
    assert doctor.main(["--workspace", str(blocker / "ws"), "--gpu", "off"]) == 2
    captured = capsys.readouterr()
    assert "NOT writable" in captured.out and "hint:" in captured.out
    assert captured.err.strip().splitlines()[-1] == "gpuflow.doctor: required: workspace (see the hints above)"


def test_doctor_require_gpu_exits_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert doctor.main(["--gpu", "require", "--workspace", str(tmp_path)]) == 4
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("gpuflow.doctor: no CUDA device visible: CUDA_VISIBLE_DEVICES=''")


def test_owner_hint(tmp_path: Path) -> None:
    uid = tmp_path.stat().st_uid
    assert doctor._owner_hint(tmp_path, uid + 1) == f"running as UID {uid + 1} but {tmp_path} belongs to {uid}"


@pytest.mark.parametrize(("visible", "expected"), [
    ("1", "handle1"), ("3,2", "handle3"), ("GPU-8e05e49e-4cb5", "uuid:GPU-8e05e49e-4cb5"), ("", "handle0"),
])
def test_sampler_watches_the_pinned_device(visible: str, expected: str) -> None:
    # NVML ignores CUDA_VISIBLE_DEVICES: telemetry must pick the pinned GPU itself
    import types

    nvml = types.SimpleNamespace(nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}",
                                 nvmlDeviceGetHandleByUUID=lambda u: f"uuid:{u}")
    assert telemetry._handle(nvml, {"CUDA_VISIBLE_DEVICES": visible}) == expected
