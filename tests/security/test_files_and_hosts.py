"""Tokens go only to the host named; files gpuflow writes stay where they belong."""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.flow.test_run import notebook
from tests.network.conftest import FileServer, publish
from tests.security.conftest import gpuflow

TOKEN = "tok_REDIRECT_0123456789abcdef"
Route = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture
def servers() -> Iterator[Callable[[dict[str, Route]], tuple[str, list[tuple[str, dict[str, str]]]]]]:
    """Loopback HTTP servers, each on its own port, answering by path and recording each request's headers."""
    started: list[ThreadingHTTPServer] = []

    def start(routes: dict[str, Route]) -> tuple[str, list[tuple[str, dict[str, str]]]]:
        seen: list[tuple[str, dict[str, str]]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                seen.append((self.path, dict(self.headers)))
                routes[self.path](self)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", seen

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def _redirect(to: str) -> Route:
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", to)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return answer


def _body(data: bytes) -> Route:
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return answer


def test_a_redirect_to_another_host_gets_no_token(servers: Any, tmp_path: Path) -> None:
    other, other_seen = servers({"/data.bin": _body(b"payload\n")})
    named, named_seen = servers({"/data.bin": _redirect(f"{other}/data.bin"), "/same": _redirect("/here"),
                                 "/here": _body(b"same\n")})
    done = gpuflow("download", f"{named}/data.bin", str(tmp_path / "data.bin"), "--token-env", "DL_TOKEN",
                   env={"DL_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "data.bin").read_bytes() == b"payload\n"
    assert named_seen[0][1].get("Authorization") == f"Bearer {TOKEN}"
    assert [h.get("Authorization") for _, h in other_seen] == [None]
    # a redirect that stays on the named host keeps the token
    same = gpuflow("download", f"{named}/same", str(tmp_path / "same.bin"), "--token-env", "DL_TOKEN",
                   env={"DL_TOKEN": TOKEN})
    assert same.returncode == 0 and named_seen[-1] == ("/here", named_seen[-1][1])
    assert named_seen[-1][1].get("Authorization") == f"Bearer {TOKEN}"


def test_a_server_ignoring_if_range_never_gives_a_spliced_file(file_server: FileServer, tmp_path: Path) -> None:
    old, new = bytes(range(256)) * 2048, bytes(reversed(range(256))) * 2048
    file_server.files["/d.bin"] = old
    file_server.faults.drop_after = [100_000]
    dest = tmp_path / "d.bin"
    first = gpuflow("download", file_server.url("/d.bin"), str(dest), "--retries", "0")
    assert first.returncode == 3 and (tmp_path / "d.bin.part").stat().st_size == 100_000
    # the file changes upstream; this server answers Range with 206 whatever If-Range says
    file_server.files["/d.bin"] = new
    again = gpuflow("download", file_server.url("/d.bin"), str(dest))
    assert again.returncode == 0 and "starting over" in again.stderr, again.stderr[-2000:]
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == hashlib.sha256(new).hexdigest()


def test_a_planted_part_symlink_is_never_written_through(file_server: FileServer, tmp_path: Path) -> None:
    data = b"x" * 200_000
    file_server.files["/d.bin"] = data
    victim = tmp_path / "outside" / "precious.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"precious\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    url = file_server.url("/d.bin")
    etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
    (repo / "d.bin.part").symlink_to(victim)
    (repo / "d.bin.part.json").write_text(json.dumps({"url": url, "validator": etag}))
    done = gpuflow("download", url, str(repo / "d.bin"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert victim.read_bytes() == b"precious\n"
    assert not (repo / "d.bin").is_symlink() and (repo / "d.bin").read_bytes() == data


def test_stage_never_empties_the_test_repo(tmp_path: Path) -> None:
    src = tmp_path / "tests-repo"
    (src / "tests").mkdir(parents=True)
    (src / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    html = tmp_path / "page.html"
    html.write_text("<html>RESULT=</html>")
    for dest in (src, src / "sub"):
        done = gpuflow("stage", "--html", str(html), "--repo", str(src), "--dest", str(dest))
        assert done.returncode == 2 and "overlaps the test repo" in done.stderr.strip().splitlines()[-1]
        assert (src / "tests" / "test_x.py").is_file()
    dest = tmp_path / "copy"
    done = gpuflow("stage", "--html", str(html), "--repo", str(src), "--dest", str(dest), "--input-dir", ".")
    assert done.returncode == 2 and "--input-dir '.'" in done.stderr.strip().splitlines()[-1]
    assert (src / "tests" / "test_x.py").is_file()
    assert not dest.exists() or (dest / "tests" / "test_x.py").is_file()


def test_a_notebook_glob_refuses_a_symlink_out_of_the_repo(tmp_path: Path) -> None:
    outside = notebook(tmp_path / "outside" / "evil.ipynb", "print('RESULT=', 'ran outside')")
    repo = tmp_path / "nbs"
    notebook(repo / "nb" / "ok.ipynb", "print('RESULT=', n)")
    (repo / "nb" / "evil.ipynb").symlink_to(outside)
    out = tmp_path / "out"
    done = gpuflow("run", "--repo", str(repo), "--notebooks", "nb/*.ipynb", "--test-repo", "", "--out", str(out),
                   "--gpu", "off")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "outside" in done.stderr.strip().splitlines()[-1]
    assert not list(out.rglob("evil_output.ipynb"))


def test_github_token_unasked_goes_to_github_only(git_server: Any, history: Any, tmp_path: Path) -> None:
    srv = git_server(token=TOKEN)
    publish(history.path, srv.root)
    # GITHUB_TOKEN is in every Actions job's environment; this host is not GitHub
    done = gpuflow("clone", srv.url("repo.git"), str(tmp_path / "out"), "--retries", "0",
                   env={"GITHUB_TOKEN": TOKEN})
    assert done.returncode == 3, done.stderr[-2000:]
    named = gpuflow("clone", srv.url("repo.git"), str(tmp_path / "out2"), "--retries", "0",
                    "--token-env", "GITHUB_TOKEN", env={"GITHUB_TOKEN": TOKEN})
    assert named.returncode == 0, named.stderr[-2000:]
