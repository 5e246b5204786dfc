"""CI-aware logging: GitHub Actions folds and annotations, plain timestamped
lines for Tekton and terminals, or JSON lines.

There is one logger per process (there is only one stderr), so the module
holds it. Everything goes to stderr: stdout is kept for results that scripts
read, such as the commit SHA printed by `gpuflow.clone`.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Literal, TextIO

Format = Literal["plain", "github", "json"]
FORMATS: tuple[str, ...] = ("auto", "plain", "github", "json")

_secrets: set[str] = set()
# user:password@ or token@ in URLs, and the usual header forms. The
# lookbehind starts a scheme only at the start of a word: without it every
# letter of a long word is tried as a scheme start (quadratic), which made
# redacting 10 MB of notebook output take seconds (docs/benchmarks.md, the scaling rows).
_URL_CREDENTIALS = re.compile(r"(?<![a-zA-Z0-9+.-])(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_AUTH_HEADER = re.compile(r"(?i)(authorization:\s*(?:bearer|basic|token)?\s*)\S+")


def add_secret(value: str | None) -> None:
    """Never print this value: every message and echoed command is redacted."""
    if value and len(value) >= 4:
        _secrets.add(value)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """`text` without terminal escape codes (colours, cursor moves): what a
    kernel's traceback or a cell's stderr carries, and no report should."""
    return _ANSI.sub("", text)


def redact(text: str) -> str:
    """Remove registered secrets, URL credentials and auth headers from text."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    # substring checks first: notebook output runs through here by the MB
    if "://" in text:
        text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    if "authorization" in text.lower():
        text = _AUTH_HEADER.sub(r"\g<1>***", text)
    return text


def detect_format(env: Mapping[str, str] | None = None) -> Format:
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") == "true":
        return "github"
    return "plain"


class Logger:
    def __init__(self) -> None:
        self.format: Format = detect_format()
        self.prefix = "gpuflow"
        self.stream: TextIO | None = None  # None: sys.stderr at the time of writing
        self.debug_enabled = False

    def configure(
        self, fmt: str = "auto", *, prefix: str | None = None, debug: bool | None = None
    ) -> None:
        self.format = detect_format() if fmt == "auto" else fmt  # type: ignore[assignment]
        if prefix is not None:
            self.prefix = prefix
        if debug is not None:
            self.debug_enabled = debug

    def _write(self, line: str) -> None:
        stream = self.stream or sys.stderr
        try:
            stream.write(line + "\n")
            stream.flush()
        except OSError:
            # the reader is gone (the parent `gpuflow run` was killed): a step
            # must still stop its kernel and save, so it goes on without a log
            # instead of dying, or hanging, on an exception raised in a callback
            self.stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process

    def _emit(self, level: str, message: str, **fields: object) -> None:
        message = redact(message)
        if self.format == "json":
            record: dict[str, object] = {"ts": _now(), "level": level, "source": self.prefix, "msg": message}
            record.update({k: v for k, v in fields.items() if v is not None})
            self._write(json.dumps(record, default=str))
        elif self.format == "github" and level in ("warning", "error"):
            # annotations must be one line; GitHub decodes %0A back to newlines
            self._write(f"::{level}::{self.prefix}: {message.replace(chr(10), '%0A')}")
        else:
            tag = "" if level == "info" else f"{level}: "
            self._write(f"{_now()} {self.prefix}: {tag}{message}")

    def debug(self, message: str, **fields: object) -> None:
        if self.debug_enabled:
            self._emit("debug", message, **fields)

    def info(self, message: str, **fields: object) -> None:
        self._emit("info", message, **fields)

    def warning(self, message: str, **fields: object) -> None:
        self._emit("warning", message, **fields)

    def error(self, message: str, **fields: object) -> None:
        self._emit("error", message, **fields)

    def raw(self, text: str) -> None:
        """Pass through output of a child (kernel, pytest), redacted, unprefixed."""
        if self.format == "json":
            self._emit("output", text.rstrip("\n"))
        else:
            self._write(redact(text.rstrip("\n")))

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """A folded group on GitHub Actions; a start and an end line elsewhere."""
        start = time.monotonic()
        if self.format == "github":
            self._write(f"::group::{name}")
        else:
            self._emit("info", f"{name} ...", event="step-start", step=name)
        ok = False
        try:
            yield
            ok = True
        finally:
            took = time.monotonic() - start
            if self.format == "github":
                self._write("::endgroup::")
            mark = "done" if ok else "failed"
            self._emit("info", f"{name}: {mark} in {took:.1f}s", event="step-end", step=name, ok=ok)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


log = Logger()
