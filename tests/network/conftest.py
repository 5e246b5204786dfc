"""Real servers on 127.0.0.1 for the network tests: `git http-backend` behind
http.server (with auth and injected failures), and a file server with Range."""
from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


def git(*args: str, cwd: Path | str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()

HTTP_BACKEND = Path(subprocess.run(["git", "--exec-path"], capture_output=True, text=True).stdout.strip()) \
    / "git-http-backend"


@dataclass
class Faults:
    """Failures a server injects into its first requests."""

    unavailable: int = 0  # answer 503 to this many requests
    reset: int = 0  # close this many connections without answering
    requests: list[str] = field(default_factory=list)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


def _serve(handler: type[BaseHTTPRequestHandler], **attrs: Any) -> tuple[_Server, str]:
    server = _Server(("127.0.0.1", 0), handler)
    for key, value in attrs.items():
        setattr(server, key, value)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _faulted(handler: BaseHTTPRequestHandler) -> bool:
    faults: Faults = handler.server.faults  # type: ignore[attr-defined]
    faults.requests.append(f"{handler.command} {handler.path}")
    if faults.reset > 0:
        faults.reset -= 1
        handler.close_connection = True
        handler.connection.shutdown(2)  # the client sees a reset / empty reply
        return True
    if faults.unavailable > 0:
        faults.unavailable -= 1
        handler.send_error(503, "try later")
        return True
    return False


class GitHandler(BaseHTTPRequestHandler):
    """Smart HTTP through the real `git http-backend` CGI program."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _cgi(self) -> None:
        if _faulted(self):
            return
        token = self.server.token  # type: ignore[attr-defined]
        if token is not None:
            want = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
            if self.headers.get("Authorization") != want:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": self.server.root,  # type: ignore[attr-defined]
            "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command, "PATH_INFO": path,
            "QUERY_STRING": query, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        out = subprocess.run([str(HTTP_BACKEND)], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@dataclass
class GitServer:
    root: Path
    base: str
    faults: Faults
    server: _Server

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[Any]:
    """`git_server(token=None, unavailable=0, reset=0)` -> a running GitServer
    whose root holds bare repos placed with `publish`."""
    servers: list[_Server] = []

    def start(*, token: str | None = None, unavailable: int = 0, reset: int = 0) -> GitServer:
        root = tmp_path / f"srv{len(servers)}"
        root.mkdir()
        faults = Faults(unavailable=unavailable, reset=reset)
        server, base = _serve(GitHandler, root=str(root), token=token, faults=faults)
        servers.append(server)
        return GitServer(root=root, base=base, faults=faults, server=server)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def publish(work: Path, server_root: Path, name: str = "repo.git") -> Path:
    bare = server_root / name
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


@dataclass
class History:
    path: Path  # a bare repo
    commits: list[str]  # oldest first, on main
    feature: str  # tip of branch "feature"
    tag: str  # the commit tagged v1.0 (annotated)


def _fast_import_stream() -> str:
    """30 commits on main, branch feature off commit 5 (adding sub/ and docs/),
    annotated tag v1.0 on commit 10: one `git fast-import`, not 40 commands."""
    who = "gpuflow tests <tests@gpuflow.invalid> 1700000000 +0000"

    def blob(path: str, text: str) -> str:
        return f"M 644 inline {path}\ndata {len(text)}\n{text}\n"

    def commit(ref: str, mark: int, parent: int | None, message: str, files: str) -> str:
        head = f"commit {ref}\nmark :{mark}\ncommitter {who}\ndata {len(message)}\n{message}\n"
        return head + (f"from :{parent}\n" if parent else "") + files

    parts = [commit("refs/heads/main", i + 1, i or None, f"commit {i}", blob("count.txt", f"{i}\n"))
             for i in range(30)]
    parts.append(commit("refs/heads/feature", 100, 6, "feature work", blob("feature.txt", "feature\n")))
    parts.append(commit("refs/heads/feature", 101, 100, "two dirs",
                        blob("sub/only.txt", "sparse\n") + blob("docs/file.txt", "docs\n")))
    parts.append(f"tag v1.0\nfrom :11\ntagger {who}\ndata 7\nrelease\n")
    return "".join(parts)


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    repo = tmp_path_factory.mktemp("history") / "work.git"
    git("init", "-q", "--bare", "-b", "main", str(repo), cwd=repo.parent)
    subprocess.run(["git", "fast-import", "--quiet"], input=_fast_import_stream(), text=True, cwd=repo,
                   check=True, capture_output=True)
    commits = git("rev-list", "--reverse", "main", cwd=repo).split()
    return History(path=repo, commits=commits, feature=git("rev-parse", "feature", cwd=repo),
                   tag=git("rev-parse", "v1.0^{commit}", cwd=repo))


# -- a file server with Range, for downloads ---------------------------------------
@dataclass
class FileFaults:
    honor_range: bool = True
    drop_after: list[int] = field(default_factory=list)  # per request: close after N body bytes
    stall_after: list[int] = field(default_factory=list)  # per request: stop sending after N bytes, keep open
    stall_s: float = 3.0  # how long a stalled response stays open (longer than the client's timeout)
    unavailable: int = 0
    log: list[tuple[str | None, int, int]] = field(default_factory=list)  # (Range, status, body bytes sent)


class FileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        faults: FileFaults = self.server.faults  # type: ignore[attr-defined]
        data: bytes | None = self.server.files.get(self.path)  # type: ignore[attr-defined]
        if faults.unavailable > 0:
            faults.unavailable -= 1
            faults.log.append((self.headers.get("Range"), 503, 0))
            self.send_error(503)
            return
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        wanted = self.headers.get("Range")
        if wanted and faults.honor_range:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        limit = faults.drop_after.pop(0) if faults.drop_after else None
        stall = faults.stall_after.pop(0) if faults.stall_after else None
        cut = min(x for x in (limit, stall, len(body)) if x is not None)
        sent = 0
        try:
            for i in range(0, cut, 65536):
                chunk = body[i:min(i + 65536, cut)]
                self.wfile.write(chunk)
                sent += len(chunk)
            self.wfile.flush()
        except OSError:
            pass
        faults.log.append((wanted, status, sent))
        if stall is not None and cut < len(body):
            time.sleep(faults.stall_s)
        if cut < len(body):
            self.close_connection = True
            self.connection.shutdown(2)


@dataclass
class FileServer:
    base: str
    files: dict[str, bytes]
    faults: FileFaults

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    files: dict[str, bytes] = {}
    faults = FileFaults()
    server, base = _serve(FileHandler, files=files, faults=faults)
    yield FileServer(base=base, files=files, faults=faults)
    server.shutdown()
    server.server_close()


@pytest.fixture
def payload() -> bytes:
    """2 MiB of incompressible bytes (deterministic)."""
    blocks = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(65536)]
    return b"".join(blocks)
