"""The backoff schedule's properties, with `time.sleep` swapped out."""
from __future__ import annotations

from pathlib import Path

import pytest

from gpuflow import download as dl
from gpuflow.core.errors import DownloadError
from gpuflow.core.retry import Backoff, with_retries

from .conftest import FileServer


class Flaky(Exception):
    pass


class Broken(Exception):
    pass


def test_delays_grow_exponentially_with_jitter_and_a_cap() -> None:
    policy = Backoff(attempts=10, base=2.0, cap=30.0)
    for n, ceiling in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 30), (9, 30)]:
        assert policy.delay(n, rng=lambda: 0.0) == ceiling / 2
        assert policy.delay(n, rng=lambda: 0.999999) == pytest.approx(ceiling, rel=1e-5)


def test_transient_failures_retried_then_success() -> None:
    sleeps: list[float] = []
    cleaned: list[str] = []

    def attempt(n: int) -> str:
        if n < 3:
            raise Flaky(f"try {n}")
        return "ok"

    result = with_retries(attempt, policy=Backoff(attempts=5, base=1.0), transient=lambda e: isinstance(e, Flaky),
                          what="t", sleep=sleeps.append, between=lambda e: cleaned.append(str(e)))
    assert result == "ok" and len(sleeps) == 2 and cleaned == ["try 1", "try 2"]
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0


def test_permanent_failure_is_not_retried_and_last_error_propagates() -> None:
    sleeps: list[float] = []
    calls: list[int] = []

    def broken(n: int) -> None:
        calls.append(n)
        raise Broken("no")

    with pytest.raises(Broken):
        with_retries(broken, policy=Backoff(attempts=5), transient=lambda e: isinstance(e, Flaky),
                     what="t", sleep=sleeps.append)
    assert calls == [1] and sleeps == []

    def flaky(n: int) -> None:
        raise Flaky(f"try {n}")

    with pytest.raises(Flaky, match="try 3"):
        with_retries(flaky, policy=Backoff(attempts=3), transient=lambda e: True, what="t", sleep=sleeps.append)


def test_download_defaults_outlast_a_one_minute_outage(file_server: FileServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("gpuflow.core.retry.time.sleep", sleeps.append)
    file_server.files["/x"] = b"x"
    file_server.faults.unavailable = 100
    with pytest.raises(DownloadError, match="503"):
        dl.download(file_server.url("/x"), tmp_path / "x")
    assert len(sleeps) == 5 and sum(sleeps) >= 60
