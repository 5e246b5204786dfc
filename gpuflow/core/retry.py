"""Retry with exponential backoff and jitter, for steps that touch the network.

Only failures that a later try can fix are retried (refused or reset
connections, timeouts, HTTP 5xx); the caller says which ones those are with a
predicate, because only it knows how its library reports them.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from gpuflow.core.errors import first_line
from gpuflow.core.log import log

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """`attempts` tries in all; the wait before try n+1 is drawn from
    [d/2, d] with d = min(cap, base * 2**(n-1)): exponential, but jittered so
    that parallel steps hitting the same outage do not retry in lockstep."""

    attempts: int = 4
    base: float = 2.0
    cap: float = 60.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** (attempt - 1))
        return ceiling / 2 + rng() * ceiling / 2


def with_retries(
    attempt: Callable[[int], T],
    *,
    policy: Backoff,
    transient: Callable[[BaseException], bool],
    what: str,
    sleep: Callable[[float], None] | None = None,
    between: Callable[[BaseException], None] | None = None,
) -> T:
    """Call `attempt(n)` for n = 1.. until it returns, a failure is not
    transient, or the tries run out; then the last exception propagates.

    `between(exc)` runs after each failed try that will be retried (remove a
    partial clone, say); `sleep` (default `time.sleep`, looked up at call
    time) is injectable so tests take no time.
    """
    for n in range(1, max(1, policy.attempts) + 1):
        try:
            return attempt(n)
        except Exception as exc:
            if not transient(exc):
                raise
            if n >= policy.attempts:
                if n > 1:
                    log.warning(f"{what}: giving up after {n} tries")
                raise
            wait = policy.delay(n)
            log.warning(f"{what}: try {n}/{policy.attempts} failed ({first_line(exc)}); "
                        f"retrying in {wait:.1f}s")
            if between is not None:
                between(exc)
            (sleep or time.sleep)(wait)
    raise AssertionError("unreachable")  # the loop returns or raises
