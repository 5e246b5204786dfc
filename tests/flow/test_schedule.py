"""Slots from --gpus/--jobs, and the queue that feeds them."""
from __future__ import annotations

import threading
import time

import pytest

from gpuflow.core import errors
from gpuflow.flow.schedule import Pool, Slot, slots_for


def test_slots() -> None:
    assert [s.name for s in slots_for("", 3, [])] == ["cpu0", "cpu1", "cpu2"]
    assert slots_for("", 1, [])[0].env() == {}
    # pinned by nvidia-smi's index, which CUDA follows only in PCI bus order
    assert [s.env() for s in slots_for("1, 0", 1, [])] == [
        {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}]
    assert [s.gpu for s in slots_for("all", 1, [{"index": 0}, {"index": 1}])] == ["0", "1"]
    with pytest.raises(errors.NoGPUError):
        slots_for("all", 1, [])
    with pytest.raises(errors.ConfigError):
        slots_for("first", 1, [])


def test_a_free_slot_takes_the_next_item_and_fail_fast_stops_the_queue() -> None:
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    def work(item: int, slot: Slot) -> int:
        time.sleep(0.05 if item else 0.2)  # item 0 is slow: the other slot takes the rest
        with lock:
            seen.append((slot.name, item))
        return item

    pool: Pool[int, int] = Pool(slots=slots_for("", 2, []), work=work, failed=lambda r: False)
    pool.start([0, 1, 2, 3])
    assert pool.wait(10)
    assert sorted(pool.results) == [0, 1, 2, 3]
    assert {slot for slot, item in seen if item != 0} == {"cpu1"}

    stopper: Pool[int, int] = Pool(slots=slots_for("", 1, []), work=work, failed=lambda r: r == 1,
                                   fail_fast=True)
    stopper.start([1, 2, 3])
    assert stopper.wait(10) and sorted(stopper.results) == [0]


def test_unpinned_slots_on_a_gpu_are_named_after_it() -> None:
    from gpuflow.gpu.devices import default_device

    facts = {"visible": True, "devices": [{"index": 0, "uuid": "GPU-aaaa1111bbbb"},
                                          {"index": 1, "uuid": "GPU-cccc2222dddd"}]}
    assert default_device(facts, {}) == "0" and default_device(facts, {"CUDA_VISIBLE_DEVICES": "1,0"}) == "1"
    assert default_device(facts, {"CUDA_VISIBLE_DEVICES": "GPU-cccc2222dddd"}) == "1"
    assert default_device({"visible": False}, {}) is None
    assert [s.name for s in slots_for("", 1, [], default_gpu="1")] == ["gpu1"]
    assert [s.name for s in slots_for("", 2, [], default_gpu="0")] == ["gpu0-0", "gpu0-1"]
    assert all(s.env() == {} for s in slots_for("", 2, [], default_gpu="0"))  # unpinned: the variables stay as they are
