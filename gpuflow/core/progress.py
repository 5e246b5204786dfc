"""Progress of a long transfer: a tqdm bar on a terminal, a plain line now
and then in CI logs (GitHub Actions and Tekton show no carriage returns)."""
from __future__ import annotations

import sys
import time
from typing import Any

from gpuflow.core.log import log

EVERY_S = 15.0  # often enough to see it move, not to flood the log


class Progress:
    """Call `update(done)` with the bytes done so far; `close()` at the end."""

    def __init__(self, total: int | None, initial: int = 0, *, every_s: float | None = None) -> None:
        self.total, self.initial, self.done = total, initial, initial
        self.every_s = EVERY_S if every_s is None else every_s
        self.started = self.last = time.monotonic()
        self.bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm  # lazily: only a terminal draws a bar

            self.bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                            file=sys.stderr, leave=False)

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.done)
        elif time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            log.info(self.line(done))
        self.done = done

    def line(self, done: int) -> str:
        """`812.0 MiB of 1700.0 MiB (48%), ETA 31s at 28.4 MiB/s`"""
        rate = (done - self.initial) / max(time.monotonic() - self.started, 1e-6)
        text = mib(done)
        if self.total:
            eta = (self.total - done) / rate if rate > 0 else float("inf")
            text += f" of {mib(self.total)} ({100 * done / self.total:.0f}%), ETA {eta:.0f}s"
        return f"{text} at {mib(int(rate))}/s"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
