"""`python -m gpuflow.download URL DEST`: fetch a (multi-GB) dataset that
resumes, verifies while streaming, and never leaves an unverified file at DEST.

Bytes go to `DEST.part`; checksums and size are computed as they arrive; only
a verified file is renamed to DEST. An interrupted transfer (dropped
connection, killed process) continues from the bytes on disk with a `Range`
request. Exit 0 verified, 3 network or checksum failure, 2 bad URL or
unwritable destination.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gpuflow.core import download_cache, secrets, tables
from gpuflow.core.errors import AuthError, ChecksumError, ConfigError, DownloadError, InfraError, InputError
from gpuflow.core.fsutil import atomic_write_text
from gpuflow.core.log import add_secret, log, redact
from gpuflow.core.progress import Progress
from gpuflow.core.retry import Backoff, with_retries
from gpuflow.core.step import Step

CHUNK = 1 << 20


@dataclass(frozen=True, kw_only=True)
class DownloadResult:
    path: Path
    bytes: int
    sha256: str
    source: str  # "network" | "cache" | "resumed"
    seconds: float
    bytes_transferred: int  # over the network in this call, all tries together

    def __str__(self) -> str:
        return f"{self.path} ({self.bytes} bytes, sha256 {self.sha256[:12]}, from {self.source})"

    def _repr_html_(self) -> str:
        return tables.dataclass_table(self)


@dataclass(frozen=True)
class _Expect:
    sha256: str | None
    md5: str | None
    size: int | None


class _Transient(DownloadError):
    """Worth another try; the .part file is kept so the next try resumes."""


class _Mismatch(ChecksumError):
    def __init__(self, message: str, *, resumed: bool) -> None:
        super().__init__(message)
        self.resumed = resumed


class _Digests:
    def __init__(self, want_md5: bool) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if want_md5 else None
        self.count = 0

    def update(self, block: bytes) -> None:
        self.sha256.update(block)
        if self.md5 is not None:
            self.md5.update(block)
        self.count += len(block)

    def feed_file(self, path: Path, limit: int | None = None) -> None:
        with open(path, "rb") as fh:
            while block := fh.read(CHUNK if limit is None else min(CHUNK, limit - self.count)):
                self.update(block)

    def problem(self, expect: _Expect) -> str | None:
        """What does not match, naming both values; None when all match."""
        if expect.size is not None and self.count != expect.size:
            return f"size mismatch: expected {expect.size} bytes, got {self.count}"
        if expect.sha256 and self.sha256.hexdigest() != expect.sha256:
            return f"sha256 mismatch: expected {expect.sha256}, got {self.sha256.hexdigest()}"
        if expect.md5 and self.md5 is not None and self.md5.hexdigest() != expect.md5:
            return f"md5 mismatch: expected {expect.md5}, got {self.md5.hexdigest()}"
        return None


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    retries: int = 5,
    timeout: float = 30.0,
    cache_dir: Path | None = None,
    headers: Mapping[str, str] | None = None,
    token_env: str | None = None,
    backoff: float = 4.0,
) -> DownloadResult:
    """Download `url` to `dest`, verified against the checksums and size given.

    Resumes a `dest.part` left by an earlier try or run; `cache_dir` keeps a
    verified copy keyed by URL (and checksum) that later calls link from.
    """
    start = time.monotonic()
    dest = Path(dest).absolute()
    _check_url(url)
    expect = _Expect(sha256.lower() if sha256 else None, md5.lower() if md5 else None, size)
    request_headers = _request_headers(headers, token_env)
    part = dest.with_name(dest.name + ".part")
    _remove_planted_links(dest, part, download_cache.sidecar(part))
    _check_writable(dest)
    done = _from_disk(url, dest, expect, cache_dir)
    if done is not None:
        return _result(dest, done, "cache", start, 0)
    stats = {"transferred": 0, "resumed_from": 0}

    def fetch_verified() -> _Digests:
        return with_retries(
            lambda n: _fetch(url, part, request_headers, timeout, expect, stats),
            policy=Backoff(attempts=retries + 1, base=backoff), transient=lambda e: isinstance(e, _Transient),
            what=f"download {redact(url)}",
        )

    with log.step(f"download {redact(url)}"):
        try:
            digests = fetch_verified()
        except _Mismatch as exc:
            _discard(part)
            if not exc.resumed:
                raise ChecksumError(f"{exc} ({redact(url)})") from None
            log.warning(f"the resumed file failed verification ({exc}); downloading it once more from scratch")
            try:
                digests = fetch_verified()
            except _Mismatch as again:
                _discard(part)
                raise ChecksumError(f"{again} ({redact(url)}), also after a fresh download") from None
        os.replace(part, dest)
        download_cache.sidecar(part).unlink(missing_ok=True)
    if cache_dir is not None:
        download_cache.store(dest, download_cache.entry_for(cache_dir, url, expect.sha256 or expect.md5), url,
                    digests.sha256.hexdigest())
    source = "resumed" if stats["resumed_from"] else "network"
    return _result(dest, digests, source, start, stats["transferred"])


def _result(dest: Path, digests: _Digests, source: str, start: float, transferred: int) -> DownloadResult:
    return DownloadResult(path=dest, bytes=digests.count, sha256=digests.sha256.hexdigest(), source=source,
                          seconds=round(time.monotonic() - start, 3), bytes_transferred=transferred)


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.hostname):
        raise InputError(f"not a URL gpuflow can download: {redact(url)!r} (http, https or file)")


def _remove_planted_links(*paths: Path) -> None:
    """DEST, DEST.part and its sidecar are files gpuflow writes: a symlink
    found there (planted by a notebook repo, say) is removed, never written through."""
    for path in paths:
        if path.is_symlink():
            log.warning(f"{path} is a symlink; removing it instead of writing through it")
            path.unlink()


def _check_writable(dest: Path) -> None:
    probe = dest.with_name(dest.name + ".part")
    existed = probe.exists()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(probe, "ab"):
            pass
        if not existed:
            probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    if dest.is_dir():
        raise InputError(f"{dest} is a directory; give the file's path")


def _request_headers(headers: Mapping[str, str] | None, token_env: str | None) -> dict[str, str]:
    result = dict(headers or {})
    if token_env:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise ConfigError(f"--token-env {token_env}: the variable is not set or empty")
        secrets.declare(token_env)
        result.setdefault("Authorization", f"Bearer {token}")
    for key, value in result.items():
        if key.lower() in ("authorization", "proxy-authorization", "private-token", "x-api-key"):
            add_secret(value)
            add_secret(value.split(None, 1)[-1])
    return result


def _from_disk(url: str, dest: Path, expect: _Expect, cache_dir: Path | None) -> _Digests | None:
    """A verified file already at DEST, or a verified cache entry linked there."""
    if (expect.sha256 or expect.md5) and dest.is_file():
        digests = _digest_file(dest, expect)
        if digests.problem(expect) is None:
            log.info(f"{dest} is already here and verified")
            return digests
    if cache_dir is None:
        return None
    entry = download_cache.entry_for(cache_dir, url, expect.sha256 or expect.md5)
    if not entry.is_file():
        return None
    check = _Expect(expect.sha256 or download_cache.recorded_sha256(entry), expect.md5, expect.size)
    digests = _digest_file(entry, check)
    problem = digests.problem(check) if check.sha256 else "no recorded checksum"
    if problem is not None:
        log.warning(f"cache entry {entry} is corrupt ({problem}); replacing it")
        download_cache.evict(entry)
        return None
    download_cache.link_or_copy(entry, dest)
    log.info(f"cache hit: {entry} -> {dest}")
    return digests


def _fetch(url: str, part: Path, headers: Mapping[str, str], timeout: float, expect: _Expect,
           stats: dict[str, int]) -> _Digests:
    offset = _resumable_offset(url, part)
    digests = _Digests(bool(expect.md5))
    validator = download_cache.read_json(download_cache.sidecar(part)).get("validator") if offset else None
    if offset and not _strong(validator):
        # without a strong ETag or a Last-Modified nothing proves that the
        # bytes on disk and the server's are one file: start over
        log.info(f"no validator saved for the {offset} bytes on disk; starting over")
        offset = 0
    if offset:
        digests.feed_file(part, offset)  # one read of what is on disk; the network bytes are hashed as they come
    request = urllib.request.Request(url, headers=dict(headers))
    if offset:
        request.add_header("Range", f"bytes={offset}-")
        request.add_header("If-Range", str(validator))  # changed upstream: the server sends it all again
    try:
        response = _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part is not a prefix the server recognises
            _discard(part)
            raise _Transient("the server refused to resume; starting over") from None
        raise _http_error(exc, url) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _network_error(exc, url) from None
    with response:
        if offset and (response.status != 206 or _range_start(response) != offset
                       or validator not in (response.headers.get("ETag"), response.headers.get("Last-Modified"))):
            # a server that ignores If-Range answers 206 for a file that
            # changed: splicing its tail onto our head would be a corrupt file
            log.info(f"the server did not resume at byte {offset} of the same file (HTTP {response.status}); "
                     "starting over")
            if response.status == 206:  # only a tail came: ask again for the whole file
                _discard(part)
                raise _Transient("the server sent part of a different file")
            offset, digests = 0, _Digests(bool(expect.md5))
        if offset == 0:
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            atomic_write_text(download_cache.sidecar(part), json.dumps({"url": redact(url), "validator": validator}))
        else:
            log.info(f"resuming at byte {offset}")
        stats["resumed_from"] = offset
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else expect.size
        with open(part, "r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()
            got = _stream(response, out, digests, stats, total, offset)
    if length and length.isdigit() and got < int(length):
        raise _Transient(f"connection dropped after {offset + got} of {total} bytes")
    problem = digests.problem(expect)
    if problem is not None:
        raise _Mismatch(problem, resumed=offset > 0)
    return digests


def _stream(response: Any, out: IO[bytes], digests: _Digests, stats: dict[str, int],
            total: int | None, offset: int) -> int:
    progress = Progress(total, offset)
    got = 0
    try:
        while True:
            try:
                block = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _Transient(f"read failed after {offset + got} bytes: {exc or type(exc).__name__}") from None
            if not block:
                return got
            out.write(block)
            digests.update(block)
            got += len(block)
            stats["transferred"] += len(block)
            progress.update(offset + got)
    finally:
        out.flush()  # what arrived stays on disk for the next try to resume from
        progress.close()


def _strong(validator: object) -> bool:
    """A strong ETag or a Last-Modified date: what If-Range may carry (RFC 9110)."""
    return isinstance(validator, str) and bool(validator) and not validator.startswith("W/")


# Request headers that carry credentials: sent only where the user pointed them.
_CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "private-token", "x-api-key", "cookie")


class _KeepCredentialsHome(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but the credentials go only to the origin the user
    named: a redirect to another host or port, or from https to http, drops them."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(new.full_url) != _origin(req.full_url):
            for key in [k for k in new.headers if k.lower() in _CREDENTIAL_HEADERS]:
                new.remove_header(key)
        return new


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


_OPENER = urllib.request.build_opener(_KeepCredentialsHome)


def _resumable_offset(url: str, part: Path) -> int:
    if not part.is_file():
        return 0
    if download_cache.read_json(download_cache.sidecar(part)).get("url") != redact(url):
        _discard(part)  # a leftover from another URL: not ours to continue
        return 0
    return part.stat().st_size


def _range_start(response: Any) -> int | None:
    value = response.headers.get("Content-Range", "")  # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _http_error(exc: urllib.error.HTTPError, url: str) -> InfraError:
    message = f"HTTP {exc.code} {exc.reason} for {redact(url)}"
    if exc.code >= 500 or exc.code in (408, 429):
        return _Transient(message)
    if exc.code in (401, 403):
        return AuthError(f"{message}: check the --header or --token-env credentials")
    return DownloadError(message)


def _network_error(exc: BaseException, url: str) -> DownloadError:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, (OSError, http.client.HTTPException, socket.timeout)):
        return _Transient(f"cannot reach {redact(url)}: {reason or type(reason).__name__}")
    return DownloadError(f"cannot reach {redact(url)}: {reason}")


def _digest_file(path: Path, expect: _Expect) -> _Digests:
    digests = _Digests(bool(expect.md5))
    digests.feed_file(path)
    return digests


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    download_cache.sidecar(part).unlink(missing_ok=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="http(s):// or file:// URL")
    p.add_argument("dest", type=Path, help="the file to write (DEST.part while downloading)")
    p.add_argument("--sha256", default=None, help="expected SHA-256, checked while streaming")
    p.add_argument("--md5", default=None, help="expected MD5, checked while streaming")
    p.add_argument("--size", type=int, default=None, help="expected size in bytes")
    p.add_argument("--retries", type=int, default=5, help="retries after the first try (transient errors only)")
    p.add_argument("--backoff", type=float, default=4.0,
                   help="first retry wait in seconds; doubles each time (the default 5 retries outlast a "
                   "one-minute outage)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for connecting and for each stalled read")
    p.add_argument("--cache-dir", type=Path, default=None, help="content cache keyed by URL and checksum")
    p.add_argument("--header", action="append", default=[], metavar="'K: V'", help="extra request header")
    p.add_argument("--token-env", default=None, metavar="NAME", help="send 'Authorization: Bearer $NAME'")


def _parse_headers(raw: Sequence[str]) -> dict[str, str]:
    headers = {}
    for item in raw:
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise ConfigError("--header must look like 'Name: value'")
        headers[key.strip()] = value.strip()
    return headers


def _call(args: argparse.Namespace) -> DownloadResult:
    result = download(args.url, args.dest, sha256=args.sha256, md5=args.md5, size=args.size,
                      retries=args.retries, timeout=args.timeout, cache_dir=args.cache_dir,
                      headers=_parse_headers(args.header), token_env=args.token_env, backoff=args.backoff)
    log.info(str(result))
    return result


STEP = Step(
    name="download", description="Download a dataset with resume, checksum and cache.",
    add_arguments=add_arguments, call=_call, stdout=lambda result: result.path,
    details=lambda result: {"path": str(result.path), "bytes": result.bytes, "sha256": result.sha256,
                            "source": result.source, "bytes_transferred": result.bytes_transferred},
)


def main(argv: Sequence[str] | None = None) -> int:
    return STEP.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
