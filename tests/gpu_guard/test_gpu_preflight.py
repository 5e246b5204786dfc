"""Runner-side preflight: env parsing, require/auto/off, a fake nvidia-smi."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpuflow.core import errors
from gpuflow.gpu import devices as gpu
from gpuflow.gpu import guard


@pytest.mark.parametrize("value, expected", [
    ("", False), ("void", False), ("none", False), ("-1", False), ("NoDevFiles", False), ("-1,0", False),
    ("0", True), ("0,1", True), ("all", True), ("GPU-1234", True),
])
def test_env_visibility(value: str, expected: bool) -> None:
    visible, shown = gpu.env_visibility("CUDA_VISIBLE_DEVICES", {"CUDA_VISIBLE_DEVICES": value})
    assert visible is expected
    assert shown == f"CUDA_VISIBLE_DEVICES={value!r}"


def test_env_unset_has_no_opinion() -> None:
    assert gpu.env_visibility("NVIDIA_VISIBLE_DEVICES", {}) == (None, "NVIDIA_VISIBLE_DEVICES unset")


def _env(bin_dir: Path | None, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in [str(bin_dir) if bin_dir else "", "/usr/bin", "/bin"] if p)
    return {"PATH": path, **extra}


def test_fake_smi_makes_a_visible_gpu(fake_smi: Path) -> None:
    facts = gpu.detect(_env(fake_smi))
    assert facts["visible"] is True
    assert facts["devices"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559,
                                 "driver": "580.65.06"}]
    assert facts["driver"] == "580.65.06"
    # no libcuda on this machine: the count is nvidia-smi's, and the probe says why
    assert "libcuda: not found" in facts["checks"]


def test_smi_query_rows_are_parsed() -> None:
    text = ("0, NVIDIA H100 80GB HBM3, 81559, 580.159.04, GPU-5d8c, 9.0\n"
            "1, NVIDIA H200, [N/A], 580.159.04, GPU-77aa\nNo devices were found\n")
    assert gpu.parse_smi_query(text) == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "driver": "580.159.04",
         "uuid": "GPU-5d8c", "compute_capability": "9.0"},
        {"index": 1, "name": "NVIDIA H200", "memory_mib": None, "driver": "580.159.04", "uuid": "GPU-77aa"}]


def test_an_old_driver_without_compute_cap_still_lists_its_gpus(tmp_path: Path) -> None:
    # drivers before 510 refuse a query that names `compute_cap`: ask again without it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(
        "#!/bin/sh\ncase \"$1\" in *compute_cap*) echo 'Field \"compute_cap\" is not a valid field to query.';"
        " exit 2;; esac\necho '0, Tesla V100, 16160, 470.82.01, GPU-aa11'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    found = gpu.nvidia_smi({"PATH": str(bin_dir)})
    assert found["devices"] == [{"index": 0, "name": "Tesla V100", "memory_mib": 16160, "driver": "470.82.01",
                                 "uuid": "GPU-aa11"}]


@pytest.mark.parametrize("stdout, expected", [
    ('{"libcuda": 2, "cuda_driver_version": 13000}\n', {"libcuda": 2, "cuda_driver_version": 13000}),
    ('{"libcuda": 0}', {"libcuda": 0}),
    ("", {"libcuda": "probe failed (no answer: the CUDA driver may have crashed the child)"}),
    ("Segmentation fault\n", {"libcuda": "probe failed (no answer: the CUDA driver may have crashed the child)"}),
])
def test_probe_answers_are_parsed(stdout: str, expected: dict[str, object]) -> None:
    assert gpu.parse_probe(stdout) == expected


def test_cuda_version_from_the_driver_code() -> None:
    assert (gpu.cuda_version(13000), gpu.cuda_version(12080), gpu.cuda_version(None)) == ("13.0", "12.8", None)


def test_the_probe_child_runs_the_standard_library_only() -> None:
    # the real child on a machine without libcuda: an answer, not a failure
    assert gpu.driver_count(dict(os.environ)) == {"libcuda": "not found"}


def test_a_probe_that_hangs_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hang = tmp_path / "python"
    hang.write_text("#!/bin/sh\nsleep 30\n")
    hang.chmod(0o755)
    monkeypatch.setattr(gpu, "PROBE_TIMEOUT_S", 0.5)
    assert gpu.driver_count(dict(os.environ), python=str(hang))["libcuda"].startswith("probe failed")


def test_a_count_of_zero_from_the_driver_wins_over_nvidia_smi(fake_smi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "driver_count", lambda env: {"libcuda": 0, "cuda_driver_version": 13000})
    facts = gpu.detect(_env(fake_smi))
    assert facts["visible"] is False and facts["cuda_version"] == "13.0"
    assert "libcuda: 0 device(s)" in gpu.missing_line(facts)


@pytest.mark.parametrize("var, value", [("CUDA_VISIBLE_DEVICES", ""), ("NVIDIA_VISIBLE_DEVICES", "void"),
                                        ("CUDA_VISIBLE_DEVICES", "-1")])
def test_env_hides_the_gpu_smi_still_lists(fake_smi: Path, var: str, value: str) -> None:
    # nvidia-smi ignores CUDA_VISIBLE_DEVICES: the variable decides
    facts = gpu.detect(_env(fake_smi, **{var: value}))
    assert facts["visible"] is False
    assert f"{var}={value!r}" in gpu.missing_line(facts)


def test_require_raises_one_line_naming_the_checks(tmp_path: Path) -> None:
    with pytest.raises(errors.NoGPUError) as info:
        gpu.preflight("require", _env(None, CUDA_VISIBLE_DEVICES=""))
    message = str(info.value)
    assert info.value.exit_code == 4 and "\n" not in message
    assert message.startswith("no CUDA device visible: CUDA_VISIBLE_DEVICES=''")
    assert "nvidia-smi: not found" in message


def test_auto_warns_and_returns_facts(capsys: pytest.CaptureFixture[str]) -> None:
    facts = gpu.preflight("auto", _env(None))
    assert facts["visible"] is False and facts["gpu_policy"] == "auto"
    assert "running on the CPU" in capsys.readouterr().err


def test_off_checks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "detect", lambda *a, **k: pytest.fail("--gpu off must not probe"))
    assert gpu.preflight("off")["visible"] is None


def test_guard_preflight_uses_the_process_env(monkeypatch: pytest.MonkeyPatch, fake_smi: Path) -> None:
    monkeypatch.setenv("PATH", f"{fake_smi}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert guard.preflight(guard.GuardOptions(gpu="require"))["visible"] is True
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(errors.NoGPUError):
        guard.preflight(guard.GuardOptions(gpu="require"))


def test_broken_smi_is_a_fact_not_a_crash(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    facts = gpu.detect(_env(bin_dir))
    assert facts["visible"] is False
    assert any(c.startswith("nvidia-smi: failed") for c in facts["checks"])


def test_pool_size_flag_is_checked_at_parse_time() -> None:
    import argparse

    p = argparse.ArgumentParser()
    guard.add_arguments(p)
    opts = guard.options_from_args(p.parse_args(["--rmm", "managed", "--rmm-pool-size", "80%", "--lite"]))
    assert (opts.rmm, opts.rmm_pool_size, opts.lite) == ("managed", "80%", True)
    with pytest.raises(errors.ConfigError, match="--rmm-pool-size"):
        guard.options_from_args(p.parse_args(["--rmm-pool-size", "lots"]))


def test_importing_the_guard_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, gpuflow.gpu.guard, gpuflow.gpu.devices, gpuflow._embedded.lite, gpuflow.gpu.telemetry, gpuflow.doctor;"
            "heavy = {'cupy', 'rmm', 'papermill', 'nbconvert', 'nbclient', 'jupyter_client', 'pynvml',"
            " 'anndata', 'scanpy', 'numpy'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.stdout.strip() == "[]"


def test_the_driver_is_asked_once_per_boot_driver_and_visibility(
        fake_smi: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUFLOW_CACHE_DIR", str(tmp_path / "cache"))
    asked: list[str | None] = []

    def count(env: dict[str, str]) -> dict[str, object]:
        asked.append(env.get("CUDA_VISIBLE_DEVICES"))
        return {"libcuda": 1, "cuda_driver_version": 13000}

    monkeypatch.setattr(gpu, "driver_count", count)
    first, again = gpu.detect(_env(fake_smi)), gpu.detect(_env(fake_smi))
    assert first["runtime_devices"] == again["runtime_devices"] == 1 and again["cuda_version"] == "13.0"
    assert asked == [None]
    gpu.detect(_env(fake_smi, CUDA_VISIBLE_DEVICES="0"))  # another visibility: asked again
    assert asked == [None, "0"]


def _slow_driver(monkeypatch: pytest.MonkeyPatch, seconds: float, count: int) -> list[float]:
    """driver_count as a broken or slow driver answers it: after `seconds`."""
    import time

    asked: list[float] = []

    def count_after(env: dict[str, str]) -> dict[str, object]:
        asked.append(time.monotonic())
        time.sleep(seconds)
        return {"libcuda": count, "cuda_driver_version": 13000}

    monkeypatch.setattr(gpu, "driver_count", count_after)
    return asked


def test_the_driver_probe_runs_while_the_caller_goes_on(
        fake_smi: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import time

    monkeypatch.setenv("GPUFLOW_CACHE_DIR", str(tmp_path / "cache"))
    asked = _slow_driver(monkeypatch, 1.0, 1)
    t0 = time.monotonic()
    check = gpu.Preflight.start("require", _env(fake_smi))
    assert time.monotonic() - t0 < 0.8  # started, not waited for
    assert check.detection is not None and check.detection.pending
    # provisional: nvidia-smi's devices stand for the count until the driver answers
    assert check.facts["visible"] is True and check.facts["runtime_devices"] is None
    facts = check.settle()
    assert facts["runtime_devices"] == 1 and facts["cuda_version"] == "13.0" and facts["probe_wait_s"] > 0
    assert check.settle() is facts  # once
    # kept for this boot: the next check has nothing left to wait for
    again = gpu.Preflight.start("require", _env(fake_smi))
    assert again.detection is not None and not again.detection.pending and len(asked) == 1


def test_a_driver_that_sees_nothing_fails_require_when_the_check_settles(
        fake_smi: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUFLOW_CACHE_DIR", str(tmp_path / "cache"))
    _slow_driver(monkeypatch, 0.2, 0)
    check = gpu.Preflight.start("require", _env(fake_smi))
    with pytest.raises(errors.NoGPUError, match=r"libcuda: 0 device\(s\)"):
        check.settle()


def test_without_nvidia_smi_the_driver_is_waited_for_at_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # no provisional "no GPU" where the driver may see one: with nothing listed, ask now
    monkeypatch.setenv("GPUFLOW_CACHE_DIR", str(tmp_path / "cache"))
    _slow_driver(monkeypatch, 0.2, 2)
    check = gpu.Preflight.start("require", _env(None))
    assert check.detection is not None and not check.detection.pending
    assert check.facts["visible"] is True and check.facts["runtime_devices"] == 2


def test_hidden_devices_fail_require_at_start(fake_smi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "driver_count", lambda env: pytest.fail("hidden devices need no probe"))
    with pytest.raises(errors.NoGPUError, match="CUDA_VISIBLE_DEVICES=''"):
        gpu.Preflight.start("require", _env(fake_smi, CUDA_VISIBLE_DEVICES=""))
