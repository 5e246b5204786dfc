"""Inputs the network rows need: a big local git repo (built once with
`git fast-import`) and a Range-capable HTTP server that counts bytes sent
and can drop a connection half way."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "gpuflow bench", "GIT_AUTHOR_EMAIL": "bench@gpuflow.invalid",
    "GIT_COMMITTER_NAME": "gpuflow bench", "GIT_COMMITTER_EMAIL": "bench@gpuflow.invalid",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
}
TAG = "v1.0"


def big_repo(path: Path, *, commits: int, blob_kib: int, files: int = 50) -> Path:
    """A bare repo whose history is `commits` commits, each rewriting one of
    `files` files with `blob_kib` KiB of random bytes: the history is about
    commits * blob_kib KiB and does not delta-compress, while the tip tree
    stays small (files * blob_kib). Tagged `TAG` at the tip."""
    marker = path / "bench-complete"
    if marker.exists():
        return path
    if path.exists():
        shutil.rmtree(path)
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True, env=env)
    proc = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=path, stdin=subprocess.PIPE, env=env)
    assert proc.stdin is not None
    write = proc.stdin.write
    for i in range(1, commits + 1):
        blob = os.urandom(blob_kib * 1024)
        msg = f"commit {i}\n".encode()
        write(b"commit refs/heads/main\n")
        write(f"committer bench <bench@gpuflow.invalid> {1_600_000_000 + i} +0000\n".encode())
        write(b"data %d\n%s" % (len(msg), msg))
        write(b"M 100644 inline data/f%03d.bin\n" % (i % files))
        write(b"data %d\n%s\n" % (len(blob), blob))
    write(f"reset refs/tags/{TAG}\nfrom refs/heads/main\n\n".encode())
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")
    # fast-import packs loosely; a served repo is normally gc'ed
    subprocess.run(["git", "gc", "-q"], cwd=path, check=True, env=env)
    marker.touch()
    return path


def random_file(path: Path, size: int) -> Path:
    if path.exists() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    chunk = 16 * 1024 * 1024
    with open(tmp, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    tmp.replace(path)
    return path


class RangeServer:
    """Serves files from `root` on 127.0.0.1 with `Range: bytes=N-` support.
    `bytes_sent` counts body bytes actually written; `cut_at` (a fraction)
    drops the next full-file response after that share of the body."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bytes_sent = 0
        self.requests: list[str] = []
        self.cut_at: float | None = None
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self._lock:
            self.bytes_sent = 0
            self.requests.clear()

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, *, body: bool) -> None:
                path = server.root / self.path.lstrip("/").split("?")[0]
                if not path.is_file():
                    self.send_error(404)
                    return
                size = path.stat().st_size
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                with server._lock:
                    server.requests.append(self.headers.get("Range", "-"))
                if match and int(match.group(1)) < size:
                    start = int(match.group(1))
                    end = int(match.group(2)) if match.group(2) else size - 1
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    end = size - 1
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if not body:
                    return
                count = end - start + 1
                cut = server.cut_at
                if cut is not None and start == 0:
                    server.cut_at = None
                    count = int(size * cut)
                self.wfile.flush()
                with open(path, "rb") as f:
                    try:
                        sent = self.connection.sendfile(f, offset=start, count=count)
                    except OSError:
                        sent = 0  # client went away; what it got is unknown, count nothing
                server._count(sent)
                if count < end - start + 1:
                    self.close_connection = True
                    self.connection.shutdown(2)
        return Handler
