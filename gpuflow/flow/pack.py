"""Packing notebooks onto GPUs by the memory they were measured to need.

A pure function of the history (`gpuflow.flow.history`) and the devices:
`plan` puts each notebook on one GPU, and `Need.bytes` says how much of it
the notebook may use. On its GPU a notebook starts once the bytes it needs
are free (`gpuflow.flow.schedule.Pool`), and its RMM pool (or CuPy's own,
without RMM) is capped at its share, so a notebook that outgrows its
measurement runs out of memory itself instead of taking its neighbour's.

The headroom, and why:
- what a notebook's memory pool must hold is bounded from above twice: by its
  RMM peak (`history.Measurement.rmm_peak_bytes`) and by the device memory it
  was seen to use when it ran alone (its pool plus its CUDA context; an RMM
  pool set up at half the GPU inflates it, CuPy's caching pool slightly). The
  smaller bound, plus `HEADROOM` for run-to-run variation (data-dependent
  sizes, allocator fragmentation), is the pool's cap;
- the notebook's need on the GPU is that cap plus `CONTEXT_BYTES`, its CUDA
  context and what it allocates outside the pool;
- `RESERVE_BYTES` of every GPU is never handed out (driver, fragmentation,
  NVML's rounding).
A notebook without a measurement needs the whole GPU: it runs alone, and
what it uses is recorded for next time.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

GIB = 1 << 30
CONTEXT_BYTES = 1 * GIB
HEADROOM = 0.25
RESERVE_BYTES = 1 * GIB
UNKNOWN_DURATION_S = 600.0  # an unmeasured notebook is planned as a long one: it runs alone anyway
_OOM = re.compile(r"OutOfMemoryError|out of memory|out_of_memory|MemoryError|std::bad_alloc|"
                  r"cudaErrorMemoryAllocation|CUDA_ERROR_OUT_OF_MEMORY", re.I)


@dataclass(frozen=True, kw_only=True)
class Item:
    """A notebook to place and what it was measured to use (None: never measured)."""

    name: str
    device_peak_bytes: int | None = None
    rmm_peak_bytes: int | None = None
    duration_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class Device:
    gpu: str  # the index `CUDA_VISIBLE_DEVICES` takes
    memory_bytes: int

    @property
    def capacity(self) -> int:
        """What the notebooks on this GPU may share."""
        return max(0, self.memory_bytes - RESERVE_BYTES)


@dataclass(frozen=True, kw_only=True)
class Placement:
    name: str
    need_bytes: int | None  # None: the whole GPU (unmeasured, or too big to share)
    duration_s: float | None

    @property
    def pool_cap_bytes(self) -> int | None:
        """The notebook's RMM (or CuPy) pool cap: its need less its context."""
        return None if self.need_bytes is None else self.need_bytes - CONTEXT_BYTES


@dataclass(frozen=True, kw_only=True)
class Group:
    """The notebooks one GPU runs, and the time it is expected to take."""

    gpu: str
    memory_bytes: int
    notebooks: tuple[Placement, ...]
    estimate_s: float


def need(item: Item) -> int | None:
    """Bytes the notebook needs on a shared GPU, headroom included; None when unmeasured."""
    bounds = [b for b in (item.rmm_peak_bytes, item.device_peak_bytes) if b is not None]
    if not bounds:
        return None
    cap = math.ceil(min(bounds) * (1 + HEADROOM) / 256) * 256  # RMM takes pool sizes in 256-byte steps
    return cap + CONTEXT_BYTES


def _area(placed: Sequence[Placement], capacity: int) -> float:
    """Memory-time: each notebook's duration times the fraction of the GPU it holds."""
    return sum((p.duration_s or UNKNOWN_DURATION_S) * (1.0 if p.need_bytes is None else p.need_bytes / capacity)
               for p in placed)


def _estimate(placed: Sequence[Placement], capacity: int) -> float:
    """A GPU's expected makespan: its notebooks' memory-time area, and never
    less than its longest notebook."""
    if not placed:
        return 0.0
    return max(_area(placed, capacity), max(p.duration_s or UNKNOWN_DURATION_S for p in placed))


def plan(items: Sequence[Item], devices: Sequence[Device]) -> list[Group]:
    """One group per GPU that gets notebooks: longest first, each onto the GPU
    whose expected makespan grows least. Deterministic: the same history and
    devices give the same groups."""
    if not devices:
        return []
    placed: dict[str, list[Placement]] = {d.gpu: [] for d in devices}
    order = sorted(items, key=lambda i: (-(i.duration_s if i.duration_s is not None else UNKNOWN_DURATION_S), i.name))
    for item in order:
        needed = need(item)
        best: tuple[float, float, int, str] | None = None
        for rank, dev in enumerate(devices):
            share = needed if needed is not None and needed <= dev.capacity else None
            trial = [*placed[dev.gpu], Placement(name=item.name, need_bytes=share, duration_s=item.duration_s)]
            # equal makespans: the less loaded GPU, since notebooks sharing one also share its compute
            score = (_estimate(trial, dev.capacity or 1), _area(trial, dev.capacity or 1), rank, dev.gpu)
            best = score if best is None or score < best else best
        assert best is not None
        dev = next(d for d in devices if d.gpu == best[3])
        share = needed if needed is not None and needed <= dev.capacity else None
        placed[dev.gpu].append(Placement(name=item.name, need_bytes=share, duration_s=item.duration_s))
    by_name = {i.name: n for n, i in enumerate(items)}
    return [Group(gpu=d.gpu, memory_bytes=d.memory_bytes, estimate_s=round(_estimate(placed[d.gpu], d.capacity or 1), 1),
                  notebooks=tuple(sorted(placed[d.gpu], key=lambda p: by_name[p.name])))
            for d in devices if placed[d.gpu]]


def out_of_memory(error: str | None) -> bool:
    """The notebook failed because an allocation did not fit (RMM, CuPy, CUDA)."""
    return bool(error and _OOM.search(error))


def parse_devices(spec: str) -> list[Device]:
    """`2x80GiB` or `80GiB,40GiB`: devices to plan for on a machine without them (Tekton's plan task)."""
    from gpuflow._embedded.kernel_guard import parse_size

    out: list[Device] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        count, _, size = part.partition("x") if re.match(r"^\d+x", part) else ("1", "", part)
        try:
            memory = parse_size(size)
        except ValueError as exc:
            raise ValueError(f"{part!r}: {exc}") from None
        if memory is None or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{part!r}: use COUNTxSIZE, e.g. 2x80GiB")
        out += [Device(gpu=str(len(out) + i), memory_bytes=memory) for i in range(int(count))]
    return out
