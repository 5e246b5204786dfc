"""Spread notebooks over slots: one per GPU (pinned with CUDA_VISIBLE_DEVICES)
or N unpinned CPU slots. A slot takes the next notebook when it is free."""
from __future__ import annotations

import queue
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
        # CUDA numbers devices fastest first unless told otherwise; nvidia-smi,
        # NVML (telemetry) and `--gpus` number them by PCI bus: one order for all
        if self.gpu is None:
            return {}
        return {"CUDA_VISIBLE_DEVICES": self.gpu, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def slots_for(gpus: str, jobs: int, devices: Sequence[Any], default_gpu: str | None = None) -> list[Slot]:
    """`gpus` is '' (unpinned slots, `jobs` of them), 'all', or '0,1'.
    Unpinned slots are named after `default_gpu`, the device their kernels
    use when the preflight saw one, else they are CPU slots."""
    spec = gpus.strip()
    if not spec:
        if default_gpu is not None:
            return [Slot(name=f"gpu{default_gpu}" + (f"-{i}" if jobs > 1 else "")) for i in range(jobs)]
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


@dataclass
class Pool(Generic[T, R]):
    """Threads, one per slot, pulling work from one queue."""

    slots: list[Slot]
    work: Callable[[T, Slot], R]
    failed: Callable[[R], bool]
    fail_fast: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    results: dict[int, R] = field(default_factory=dict)
    busy_s: dict[str, float] = field(default_factory=dict)
    finished: threading.Event = field(default_factory=threading.Event)
    _running: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _queue: queue.Queue[tuple[int, T]] = field(default_factory=queue.Queue)

    def start(self, items: Sequence[T]) -> None:
        for pair in enumerate(items):
            self._queue.put(pair)
        self._running = len(self.slots)
        if not self.slots:
            self.finished.set()
        for slot in self.slots:
            threading.Thread(target=self._loop, args=(slot,), name=slot.name, daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """True once every slot is done. An Event, not Thread.join: a signal
        that interrupts Thread.join can leave the thread marked as finished
        while it still runs (CPython bpo-21822), and the run must go on
        waiting for the kernels it has just told to stop."""
        return self.finished.wait(timeout)

    def _loop(self, slot: Slot) -> None:
        try:
            self._take(slot)
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self.finished.set()

    def _take(self, slot: Slot) -> None:
        while not self.stop.is_set():
            try:
                index, item = self._queue.get_nowait()
            except queue.Empty:
                return
            t0 = time.monotonic()
            result = self.work(item, slot)
            self.busy_s[slot.name] = self.busy_s.get(slot.name, 0.0) + time.monotonic() - t0
            self.results[index] = result
            if self.fail_fast and self.failed(result):
                self.stop.set()
