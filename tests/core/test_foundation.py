"""The shared foundation: exit codes, the CLI wrapper, logging, atomic files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpuflow.core import errors, fsutil, proc, record
from gpuflow.core.log import Logger, add_secret, redact
from gpuflow.core.step import Step


def test_exit_codes_are_unique_per_family_and_documented() -> None:
    families = {
        errors.StepFailed: 1, errors.UsageError: 2, errors.InfraError: 3, errors.NoGPUError: 4,
        errors.NoTestsCollected: 5, errors.StepTimeout: 124, errors.KernelDied: 137,
        errors.Terminated: 143, errors.Interrupted: 130,
    }
    for cls, code in families.items():
        assert cls.exit_code == code
        assert code in errors.EXIT_CODES
    assert errors.exit_code_for(KeyboardInterrupt()) == 130
    assert errors.exit_code_for(RuntimeError("bug")) == errors.INTERNAL


def test_one_mapping_from_exception_to_outcome() -> None:
    import errno

    bad = errors.failure(errors.InputError("x.ipynb: not found", details={"path": "x.ipynb"}))
    assert (bad.code, bad.line, bad.details, bad.traceback) == (2, "x.ipynb: not found", {"path": "x.ipynb"}, None)
    assert errors.failure(errors.Terminated("terminated by signal 15")).code == 143
    assert errors.failure(KeyboardInterrupt()) == errors.Failure(130, "KeyboardInterrupt")
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # the machine's fault, not a bug
        full = errors.failure(OSError(code, os.strerror(code)))
        assert full.code == 3 and full.line.startswith("disk full while writing") and full.traceback is None
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError as exc:
        bug = errors.failure(exc)
    assert (bug.code, bug.line) == (errors.INTERNAL, "boom")
    assert bug.traceback is not None and "Traceback" in bug.traceback and "RuntimeError: boom" in bug.traceback
    assert errors.failure(PermissionError(errno.EACCES, "denied")).code == errors.INTERNAL


def test_worst_code_wins() -> None:
    assert errors.worst([0, 0]) == 0
    assert errors.worst([0, 1, 5]) == 1
    assert errors.worst([1, 3, 124]) == 124
    assert errors.worst([137, 143]) == 143
    assert errors.worst([]) == 0


def _cli(impl, argv=(), tmp_path: Path | None = None) -> int:  # type: ignore[no-untyped-def]
    step = Step(name="demo", description="demo", add_arguments=lambda p: p.add_argument("--out", type=Path),
                call=impl, details=lambda result: dict(result or {}))
    return step.main(list(argv))


def test_expected_failure_is_one_line_without_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def impl(args):  # type: ignore[no-untyped-def]
        raise errors.InputError(f"{tmp_path}/x.ipynb: not found")

    code = _cli(impl, ["--record-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"gpuflow.demo: {tmp_path}/x.ipynb: not found"
    rec = json.loads((tmp_path / "steps" / "demo.json").read_text())
    assert rec["status"] == "failed" and rec["exit_code"] == 2
    assert rec["error"].endswith("not found")


def test_bug_is_exit_70_with_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    def impl(args):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    assert _cli(impl) == errors.INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "gpuflow.demo: boom" in err


def test_usage_error_from_argparse_is_2_and_help_is_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(lambda a: 0, ["--nope"]) == 2
    assert _cli(lambda a: 0, ["--help"]) == 0


def test_outcome_details_reach_the_record(tmp_path: Path) -> None:
    code = _cli(lambda a: {"cells": 3}, ["--record-dir", str(tmp_path)])
    assert code == 0
    (rec,) = record.read_all(tmp_path)
    assert rec.status == "success" and rec.details == {"cells": 3}


def test_github_format_folds_and_annotates() -> None:
    import io

    logger = Logger()
    logger.stream = io.StringIO()
    logger.configure("github", prefix="gpuflow.x")
    with logger.step("Execute"):
        logger.warning("careful")
    with pytest.raises(ValueError), logger.step("Convert"):
        raise ValueError
    out = logger.stream.getvalue().splitlines()
    assert out[0] == "::group::Execute"
    assert "::warning::gpuflow.x: careful" in out
    assert "::endgroup::" in out
    assert any("Convert: failed" in line for line in out)


def test_json_format_and_redaction() -> None:
    import io

    add_secret("s3cr3t-token-value")
    logger = Logger()
    logger.stream = io.StringIO()
    logger.configure("json", prefix="gpuflow.x")
    logger.info("cloning https://user:s3cr3t-token-value@example.invalid/r.git")
    line = json.loads(logger.stream.getvalue())
    assert line["level"] == "info" and "s3cr3t" not in line["msg"]
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer ***"


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    dest = fsutil.atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), fsutil.atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_contained_refuses_escapes(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    os.symlink("/etc", tmp_path / "in" / "link")
    assert fsutil.contained(tmp_path / "in", "a/b.html") == tmp_path / "in" / "a" / "b.html"
    for bad in ("../x", "/etc/passwd", "link/passwd", ""):
        with pytest.raises(errors.UnsafePathError):
            fsutil.contained(tmp_path / "in", bad)


def test_clear_contents_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    box = tmp_path / "box"
    (box / "sub").mkdir(parents=True)
    (box / "f").write_text("y")
    os.symlink(outside, box / "link")
    fsutil.clear_contents(box)
    assert box.is_dir() and not any(box.iterdir())
    assert (outside / "keep.txt").exists()


def test_proc_run_captures_and_raises(tmp_path: Path) -> None:
    done = proc.call([sys.executable, "-c", "print('hi')"])
    assert done.stdout.strip() == "hi"
    with pytest.raises(errors.CommandError) as info:
        proc.call([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert info.value.returncode == 3 and "return code: 3" in info.value.report()
    with pytest.raises(errors.UsageError, match="not found on PATH"):
        proc.call(["gpuflow-no-such-program"])


def test_proc_timeout_kills_the_process_group() -> None:
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    with pytest.raises(errors.CommandError) as info:
        proc.call([sys.executable, "-c", code], timeout=1)
    assert info.value.returncode == 124


def test_sigterm_becomes_143_via_subprocess(tmp_path: Path) -> None:
    script = tmp_path / "step.py"
    script.write_text(
        "import time\nfrom gpuflow.core.step import Step\n"
        "def impl(a):\n    print('ready', flush=True)\n    time.sleep(30)\n    return {}\n"
        "step = Step(name='demo', description='x', add_arguments=lambda p: None, call=impl, details=dict)\n"
        f"raise SystemExit(step.main(['--record-dir', {str(tmp_path)!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=20)
    assert child.returncode == 143
    assert "gpuflow.demo: terminated by signal 15" in err
    assert json.loads((tmp_path / "steps" / "demo.json").read_text())["exit_code"] == 143


def test_top_level_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    from gpuflow.__main__ import main

    assert main([]) == 2
    assert main(["nope"]) == 2
    assert "unknown step 'nope'" in capsys.readouterr().err
