"""Spread notebooks over slots: one per GPU (pinned with CUDA_VISIBLE_DEVICES)
or N unpinned CPU slots. A notebook starts when what it claims is free: one
slot, several (a notebook that needs several GPUs), or its measured share of
one GPU's memory (`--pack`, see `gpuflow.flow.pack`)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gpuflow.core.errors import ConfigError, NoGPUError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, kw_only=True)
class Slot:
    name: str  # "gpu0", "cpu1"
    gpu: str | None = None

    def env(self) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": self.gpu} if self.gpu is not None else {}


def slots_for(gpus: str, jobs: int, devices: Sequence[Any]) -> list[Slot]:
    """`gpus` is '' (CPU slots, `jobs` of them), 'all', or '0,1'."""
    spec = gpus.strip()
    if not spec:
        return [Slot(name=f"cpu{i}") for i in range(jobs)]
    if spec == "all":
        if not devices:
            raise NoGPUError("--gpus all: no GPU is visible")
        ids = [str(d.get("index", i)) if isinstance(d, dict) else str(i) for i, d in enumerate(devices)]
    else:
        ids = [part.strip() for part in spec.split(",") if part.strip()]
        if not all(i.isdigit() for i in ids):
            raise ConfigError(f"--gpus {gpus!r}: use 'all' or device indices like '0,1'")
    return [Slot(name=f"gpu{i}", gpu=i) for i in dict.fromkeys(ids)]


@dataclass(frozen=True, kw_only=True)
class Claim:
    """What one piece of work holds while it runs."""

    width: int = 1  # slots at once: a notebook that needs N GPUs holds N (CUDA_VISIBLE_DEVICES=0,1)
    memory: int | None = None  # bytes of one slot's GPU, when packed; None holds the slot whole
    slot: str | None = None  # the one slot it may use (the pack plan's GPU)


def merged(slots: Sequence[Slot]) -> Slot:
    """Several GPU slots as one: `gpu0+gpu1`, pinned to `0,1`."""
    if len(slots) == 1:
        return slots[0]
    gpus = [s.gpu for s in slots if s.gpu is not None]
    return Slot(name="+".join(s.name for s in slots), gpu=",".join(gpus) if gpus else None)


@dataclass
class Pool(Generic[T, R]):
    """Work started as slots free up, one dispatcher, one thread per piece of
    work. A piece holds its `claim`: a whole slot (the default, one notebook
    per GPU), several whole slots at once, or `memory` bytes of one slot whose
    `capacity` is known (packing). Work is started in order; a piece that does
    not fit yet lets later pieces that do fit go first. `again` may hand a
    finished piece back once, to run again (a packed notebook that ran out of
    memory, then alone)."""

    slots: list[Slot]
    work: Callable[[T, Slot], R]
    failed: Callable[[R], bool]
    fail_fast: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    claim: Callable[[T], Claim] = lambda item: Claim()
    capacity: dict[str, int] = field(default_factory=dict)  # bytes per slot name, for memory claims
    again: Callable[[T, R], T | None] = lambda item, result: None
    results: dict[int, R] = field(default_factory=dict)
    busy_s: dict[str, float] = field(default_factory=dict)
    finished: threading.Event = field(default_factory=threading.Event)
    _pending: list[tuple[int, T]] = field(default_factory=list)
    _whole: set[str] = field(default_factory=set)
    _used: dict[str, int] = field(default_factory=dict)  # bytes held per slot by memory claims
    _holders: dict[str, int] = field(default_factory=dict)
    _since: dict[str, float] = field(default_factory=dict)
    _running: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self, items: Sequence[T]) -> None:
        self._pending = list(enumerate(items))
        for pair in self._pending:
            claim = self.claim(pair[1])
            if claim.width > len(self.slots):
                raise ConfigError(f"work item {pair[0]} needs {claim.width} slots; there are {len(self.slots)}")
        threading.Thread(target=self._dispatch, name="pool-dispatch", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """True once every slot is done. An Event, not Thread.join: a signal
        that interrupts Thread.join can leave the thread marked as finished
        while it still runs (CPython bpo-21822), and the run must go on
        waiting for the kernels it has just told to stop."""
        return self.finished.wait(timeout)

    def _dispatch(self) -> None:
        with self._cond:
            while True:
                if self.stop.is_set():
                    self._pending.clear()
                for index, item in list(self._pending):
                    got = self._fit(self.claim(item))
                    if got is not None:
                        self._pending.remove((index, item))
                        self._hold(got, self.claim(item))
                        threading.Thread(target=self._run, args=(index, item, got), daemon=True,
                                         name=merged(got).name).start()
                if not self._pending and self._running == 0:
                    break
                self._cond.wait(0.5)
        self.finished.set()

    def _fit(self, claim: Claim) -> list[Slot] | None:
        allowed = [s for s in self.slots if claim.slot is None or s.name == claim.slot]
        if claim.memory is not None and all(s.name in self.capacity for s in allowed):
            room = [(self.capacity[s.name] - self._used.get(s.name, 0), s) for s in allowed
                    if s.name not in self._whole]
            room = [(free, s) for free, s in room if free >= claim.memory]
            return [max(room, key=lambda pair: pair[0])[1]] if room else None
        idle = [s for s in allowed if not self._holders.get(s.name)]
        return idle[:claim.width] if len(idle) >= claim.width else None

    def _hold(self, slots: list[Slot], claim: Claim) -> None:
        self._running += 1
        now = time.monotonic()
        for s in slots:
            if claim.memory is not None and s.name in self.capacity:
                self._used[s.name] = self._used.get(s.name, 0) + claim.memory
            else:
                self._whole.add(s.name)
            if not self._holders.get(s.name):
                self._since[s.name] = now
            self._holders[s.name] = self._holders.get(s.name, 0) + 1

    def _release(self, slots: list[Slot], claim: Claim) -> None:
        now = time.monotonic()
        for s in slots:
            if claim.memory is not None and s.name in self.capacity:
                self._used[s.name] -= claim.memory
            else:
                self._whole.discard(s.name)
            self._holders[s.name] -= 1
            if not self._holders[s.name]:  # a slot is busy while anything holds it
                self.busy_s[s.name] = self.busy_s.get(s.name, 0.0) + now - self._since.pop(s.name)
        self._running -= 1

    def _run(self, index: int, item: T, slots: list[Slot]) -> None:
        claim = self.claim(item)
        try:
            result = self.work(item, merged(slots))
        finally:
            with self._cond:
                self._release(slots, claim)
                self._cond.notify_all()
        retry = self.again(item, result) if not self.stop.is_set() else None
        with self._cond:
            if retry is not None:
                self._pending.insert(0, (index, retry))
            else:
                self.results[index] = result
                if self.fail_fast and self.failed(result):
                    self.stop.set()
            self._cond.notify_all()
