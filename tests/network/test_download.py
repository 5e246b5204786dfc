"""gpuflow.download against a real HTTP server with Range support, on 127.0.0.1."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuflow import download as dl
from gpuflow.core.errors import ChecksumError, DownloadError

from .conftest import FileServer

ROOT = Path(__file__).resolve().parents[2]
SECRET = "Bearer s3cret-download-TOKEN-42"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuflow.download", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=120)


@pytest.fixture
def served(file_server: FileServer, payload: bytes) -> FileServer:
    file_server.files["/data.h5ad"] = payload
    return file_server


def test_verified_download(served: FileServer, payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "d" / "data.h5ad"
    result = dl.download(served.url("/data.h5ad"), dest, sha256=sha(payload),
                         md5=hashlib.md5(payload).hexdigest(), size=len(payload))
    assert dest.read_bytes() == payload and result.sha256 == sha(payload)
    assert (result.source, result.bytes, result.bytes_transferred) == ("network", len(payload), len(payload))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data.h5ad"]  # no .part, no sidecar


def test_dropped_connection_resumes_with_range(served: FileServer, payload: bytes, tmp_path: Path) -> None:
    half = len(payload) // 2
    served.faults.drop_after = [half]
    result = dl.download(served.url("/data.h5ad"), tmp_path / "f", sha256=sha(payload), backoff=0.01)
    assert result.source == "resumed" and (tmp_path / "f").read_bytes() == payload
    (_, _, first), (second_range, status, second) = served.faults.log
    assert first == half
    assert (second_range, status, second) == (f"bytes={half}-", 206, len(payload) - half)
    assert result.bytes_transferred == len(payload)  # nothing sent twice


def test_server_ignoring_range_restarts_cleanly(served: FileServer, payload: bytes, tmp_path: Path) -> None:
    half = len(payload) // 2
    served.faults.honor_range, served.faults.drop_after = False, [half]
    result = dl.download(served.url("/data.h5ad"), tmp_path / "f", sha256=sha(payload), backoff=0.01)
    assert (tmp_path / "f").read_bytes() == payload and result.source == "network"
    assert [status for _, status, _ in served.faults.log] == [200, 200]
    assert result.bytes_transferred == half + len(payload)


def test_checksum_mismatch_exit_3_and_nothing_at_dest(served: FileServer, tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(ChecksumError, match=f"expected {wrong}, got [0-9a-f]{{64}}"):
        dl.download(served.url("/data.h5ad"), tmp_path / "f", sha256=wrong)
    assert list(tmp_path.iterdir()) == []
    proc = run_cli(served.url("/data.h5ad"), str(tmp_path / "f"), "--sha256", wrong)
    assert proc.returncode == 3 and "sha256 mismatch" in proc.stderr.splitlines()[-1]


def _stale_part(dest: Path, url: str, data: bytes, served: bytes) -> None:
    """A .part left by an earlier run, with the ETag the server sends for `served` (so it is resumed)."""
    etag = '"' + hashlib.sha256(served).hexdigest()[:16] + '"'
    dest.with_name(dest.name + ".part").write_bytes(data)
    dest.with_name(dest.name + ".part.json").write_text(json.dumps({"url": url, "validator": etag}))


def test_corrupt_resumed_file_is_downloaded_again(served: FileServer, payload: bytes, tmp_path: Path) -> None:
    dest, url = tmp_path / "f", served.url("/data.h5ad")
    _stale_part(dest, url, b"garbage" * 1000, payload)
    result = dl.download(url, dest, sha256=sha(payload))
    assert dest.read_bytes() == payload and result.source == "network"
    assert [r for r, _, _ in served.faults.log] == ["bytes=7000-", None]
    served.files["/data.h5ad"] = b"changed upstream" + payload  # still wrong after the fresh download
    dest.unlink()
    _stale_part(dest, url, payload[:1000], served.files["/data.h5ad"])
    with pytest.raises(ChecksumError, match="also after a fresh download"):
        dl.download(url, dest, sha256=sha(payload))
    assert not dest.exists() and not dest.with_name("f.part").exists()


def test_cache_hit_costs_no_network_and_corrupt_entry_is_replaced(
        served: FileServer, payload: bytes, tmp_path: Path) -> None:
    cache, url = tmp_path / "cache", served.url("/data.h5ad")
    dl.download(url, tmp_path / "a", sha256=sha(payload), cache_dir=cache)
    requests = len(served.faults.log)
    hit = dl.download(url, tmp_path / "b", sha256=sha(payload), cache_dir=cache)
    assert (hit.source, hit.bytes_transferred) == ("cache", 0) and len(served.faults.log) == requests
    assert (tmp_path / "b").read_bytes() == payload
    entry = next(p for p in cache.iterdir() if not p.name.endswith(".json"))
    entry.unlink()  # a new inode: corrupting it leaves a and b alone
    entry.write_bytes(payload[:-1] + b"\0")
    again = dl.download(url, tmp_path / "c", sha256=sha(payload), cache_dir=cache)
    assert again.source == "network" and len(served.faults.log) == requests + 1
    assert entry.read_bytes() == payload and (tmp_path / "c").read_bytes() == payload


def test_verified_dest_is_not_downloaded_again(served: FileServer, payload: bytes, tmp_path: Path) -> None:
    dl.download(served.url("/data.h5ad"), tmp_path / "f", sha256=sha(payload))
    again = dl.download(served.url("/data.h5ad"), tmp_path / "f", sha256=sha(payload))
    assert again.source == "cache" and again.bytes_transferred == 0 and len(served.faults.log) == 1


def test_killed_process_resumes_on_next_run(served: FileServer, payload: bytes, tmp_path: Path) -> None:
    served.faults.stall_after = [len(payload) // 2]  # then hangs, so the kill lands mid-download
    served.faults.stall_s = 30.0
    dest = tmp_path / "f"
    part = tmp_path / "f.part"
    child = subprocess.Popen([sys.executable, "-m", "gpuflow.download", served.url("/data.h5ad"), str(dest),
                              "--timeout", "60"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size == 0):
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    on_disk = part.stat().st_size
    assert 0 < on_disk < len(payload) and not dest.exists()
    result = dl.download(served.url("/data.h5ad"), dest, sha256=sha(payload))
    assert result.source == "resumed" and dest.read_bytes() == payload
    assert result.bytes_transferred == len(payload) - on_disk
    assert served.faults.log[-1][0] == f"bytes={on_disk}-"


def test_stalled_read_times_out_and_resumes(served: FileServer, payload: bytes, tmp_path: Path) -> None:
    served.faults.stall_after = [len(payload) // 2]
    result = dl.download(served.url("/data.h5ad"), tmp_path / "f", sha256=sha(payload), timeout=0.5,
                         backoff=0.01)
    assert result.source == "resumed" and result.bytes_transferred == len(payload)


def test_5xx_is_retried_404_is_not(served: FileServer, payload: bytes, tmp_path: Path) -> None:
    served.faults.unavailable = 2
    result = dl.download(served.url("/data.h5ad"), tmp_path / "f", retries=2, backoff=0.01)
    assert result.bytes == len(payload) and len(served.faults.log) == 3
    with pytest.raises(DownloadError, match="HTTP 404"):
        dl.download(served.url("/missing"), tmp_path / "g", retries=3, backoff=0.01)
    proc = run_cli(served.url("/missing"), str(tmp_path / "g"), "--retries", "3", "--backoff", "0.01")
    assert proc.returncode == 3 and "retrying" not in proc.stderr


@pytest.mark.parametrize("url, dest", [
    ("ftp://example.invalid/x", "f"), ("not a url", "f"), ("http:///nohost", "f"), ("GOOD", "blocker/f"),
])
def test_bad_url_or_unwritable_dest_exit_2(served: FileServer, tmp_path: Path, url: str, dest: str) -> None:
    (tmp_path / "blocker").write_text("a file, so blocker/f cannot be created")
    url = served.url("/data.h5ad") if url == "GOOD" else url
    assert dl.main([url, str(tmp_path / dest)]) == 2
    assert served.faults.log == []


def test_secrets_never_logged(served: FileServer, tmp_path: Path) -> None:
    proc = run_cli(served.url("/missing"), str(tmp_path / "f"), "--header", f"Authorization: {SECRET}",
                   "--debug", "--retries", "0")
    proc2 = run_cli(served.url("/missing"), str(tmp_path / "f"), "--token-env", "DL_TOKEN", "--debug",
                    env={"DL_TOKEN": "tok-ABCDEF-123456"})
    assert proc.returncode == proc2.returncode == 3
    assert "s3cret" not in proc.stderr + proc.stdout and "tok-ABCDEF" not in proc2.stderr + proc2.stdout


def test_plain_progress_lines(served: FileServer, payload: bytes, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("gpuflow.core.progress.EVERY_S", 0.0)
    monkeypatch.setattr(dl, "CHUNK", 256 * 1024)
    dl.download(served.url("/data.h5ad"), tmp_path / "f")
    lines = [line for line in capsys.readouterr().err.splitlines() if "MiB/s" in line]
    assert lines and "of 2.0 MiB" in lines[-1] and "ETA" in lines[-1]


def test_file_url(payload: bytes, tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(payload)
    result = dl.download(source.as_uri(), tmp_path / "out.bin", sha256=sha(payload))
    assert (tmp_path / "out.bin").read_bytes() == payload and result.bytes == len(payload)


def test_cache_without_checksum_verifies_against_recorded_sha(served: FileServer, payload: bytes,
                                                              tmp_path: Path) -> None:
    cache, url = tmp_path / "cache", served.url("/data.h5ad")
    dl.download(url, tmp_path / "a", cache_dir=cache)
    hit = dl.download(url, tmp_path / "b", cache_dir=cache)
    assert hit.source == "cache" and hit.sha256 == sha(payload) and len(served.faults.log) == 1


def test_import_is_cheap() -> None:
    code = ("import sys, gpuflow.clone, gpuflow.download, gpuflow.core.retry, gpuflow.core.backup\n"
            "import gpuflow.core.download_cache, gpuflow.core.progress\n"
            "heavy = {'git', 'tqdm', 'papermill', 'nbconvert'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    for module in ("gpuflow.clone", "gpuflow.download"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert out.returncode == 0 and "usage:" in out.stdout
