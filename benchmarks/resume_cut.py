"""One-off measurement for docs/network.md: bytes re-sent by the server when
a download is cut at 50% and `gpuflow.download` resumes it.

    PYTHONPATH=$PWD python benchmarks/resume_cut.py [--mib 64]

The server counts what it writes to the socket, so the figure does not rely
on the client's own bookkeeping. Benchmarks may import what they like (the
one-subprocess-helper rule is for gpuflow/).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gpuflow.download import download


class _Cutting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    data = b""
    cut_first_at: int | None = None
    sent: list[int] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if "Range" in self.headers else 0
        body = memoryview(self.data)[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        self.end_headers()
        limit, type(self).cut_first_at = self.cut_first_at or len(body), None
        sent = 0
        while sent < min(limit, len(body)):
            sent += self.wfile.write(body[sent:min(sent + (1 << 20), limit)])
        self.sent.append(sent)
        if sent < len(body):
            self.connection.shutdown(2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=64)
    size = p.parse_args().mib << 20
    _Cutting.data = os.urandom(size)
    _Cutting.cut_first_at = size // 2
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Cutting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        result = download(f"http://127.0.0.1:{server.server_address[1]}/blob", Path(tmp) / "blob",
                          sha256=hashlib.sha256(_Cutting.data).hexdigest(), backoff=0.01)
        took = time.monotonic() - t0
    server.shutdown()
    resent = sum(_Cutting.sent) - size
    print(f"file {size} bytes; server sent {_Cutting.sent} over {len(_Cutting.sent)} requests; "
          f"re-sent {resent} bytes ({100 * resent / size:.3f}%); client counted {result.bytes_transferred}; "
          f"source={result.source}; {took:.2f}s")


if __name__ == "__main__":
    main()
