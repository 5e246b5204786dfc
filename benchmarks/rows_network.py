"""Rows 5-6: clone at a tag, download with checksum and resume."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from benchmarks.fixtures import TAG, RangeServer, big_repo, random_file
from benchmarks.harness import (
    BenchFailure,
    Config,
    Line,
    Side,
    gpuflow_cmd,
    measure,
    module_missing,
    timed,
)

MiB = 1024 * 1024
RESUME = "re-sent after a 50% cut"


def _gone(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def row5_clone(cfg: Config) -> list[Line]:
    commits, kib = (200, 10) if cfg.quick else (5000, 10)
    repo = big_repo(cfg.out / f"clone-src-{commits}.git", commits=commits, blob_kib=kib)
    url = repo.resolve().as_uri()  # file:// so that --depth is honoured (a plain path hardlinks)
    base = cfg.scratch / "row5"
    g_dest, b_dest = base / "gpuflow" / "repo", base / "git" / "repo"
    case = f"{commits} commits, {sum(f.stat().st_size for f in repo.rglob('*.pack')) / MiB:.0f} MiB history"
    # the existing Task: clone the default branch in full, then check the revision out
    baseline = Side(name="git clone+checkout", prepare=lambda: (_gone(b_dest), b_dest.parent.mkdir(parents=True, exist_ok=True)),
                    cmd=["sh", "-c", f'git clone -q "$0" "$1" && cd "$1" && git checkout -q {TAG}', url, str(b_dest)])
    gpuflow = Side(name="gpuflow.clone", prepare=lambda: _gone(g_dest.parent),
                   cmd=gpuflow_cmd("clone", url, g_dest, "--depth", "1", "--revision", TAG))
    runs, warmup = (1, 0) if cfg.quick else (5, 1)
    return [measure("5", case, "gpuflow.clone", gpuflow, baseline, cfg=cfg, runs=runs, warmup=warmup,
                    target="<= 0.3", limit=0.3)]


def _sha256(path: Path) -> str:
    sidecar = path.with_suffix(".sha256")
    if sidecar.exists() and sidecar.stat().st_mtime >= path.stat().st_mtime:
        return sidecar.read_text().strip()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            digest.update(chunk)
    sidecar.write_text(digest.hexdigest())
    return digest.hexdigest()


def row6_download(cfg: Config) -> list[Line]:
    size = 64 * MiB if cfg.quick else 1024 * MiB
    files = cfg.out / "files"
    blob = random_file(files / f"blob-{size // MiB}m.bin", size)
    sha = _sha256(blob)
    case = f"{size // MiB} MiB over loopback"
    base = cfg.scratch / "row6"
    g_dest, c_dest = base / "gpuflow" / "blob.bin", base / "curl" / "blob.bin"
    with RangeServer(files) as server:
        url = f"{server.url}/{blob.name}"
        baseline = Side(name="curl+sha256sum", prepare=lambda: (_gone(c_dest.parent), c_dest.parent.mkdir(parents=True)),
                        cmd=["sh", "-c", 'curl -sSf -o "$1" "$0" && echo "$2  $1" | sha256sum -c --quiet -',
                             url, str(c_dest), sha])
        gpuflow = Side(name="gpuflow.download", prepare=lambda: _gone(g_dest.parent),
                       cmd=gpuflow_cmd("download", url, g_dest, "--sha256", sha))
        runs, warmup = (1, 0) if cfg.quick else (5, 1)
        lines = [measure("6", case, "gpuflow.download", gpuflow, baseline, cfg=cfg, runs=runs, warmup=warmup,
                         target="<= 1.0", limit=1.0)]
        if module_missing("gpuflow.download"):
            lines.append(Line(row="6", case=RESUME, unit="%", target="<= 1 %",
                              note="n/a (module missing: gpuflow.download)"))
        else:
            lines.append(_resume(cfg, server, gpuflow, size))
    _gone(base)  # a GiB of scratch is not worth keeping
    return lines


def _resume(cfg: Config, server: RangeServer, gpuflow: Side, size: int) -> Line:
    """The server drops the first full response at 50%; the client must
    resume with a Range request rather than start again."""
    line = Line(row="6", case=RESUME, unit="%", target="<= 1 %",
                commands={"gpuflow": gpuflow.shell()})
    server.reset()
    server.cut_at = 0.5
    try:
        elapsed, _ = timed(gpuflow, cfg.logs / "row6-resume")
    except BenchFailure as exc:
        line.note = f"failed: {exc}"
        return line
    finally:
        server.cut_at = None
    resent = server.bytes_sent - size
    line.gpuflow, line.runs = 100.0 * max(resent, 0) / size, 1
    line.met = resent <= size // 100
    line.note = (f"server sent {server.bytes_sent} bytes for a {size}-byte file in {len(server.requests)} "
                 f"requests (Range: {', '.join(server.requests)}); {elapsed:.2f} s")
    return line
