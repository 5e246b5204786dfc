"""The pool cap `gpuflow run --pack` gives a notebook sharing a GPU, against
fake rmm/cupy module objects (the GPU is what cannot exist here)."""
from __future__ import annotations

import argparse

import pytest

from gpuflow._embedded import kernel_guard as kg
from gpuflow.core import errors
from gpuflow.gpu import guard

GIB = 1 << 30


def test_pool_is_capped_and_starts_no_bigger_than_the_cap(fake_gpu) -> None:  # type: ignore[no-untyped-def]
    record = kg.setup_rmm("pool", None, str(6 * GIB))
    assert fake_gpu.reinits() == [{"pool_allocator": True, "managed_memory": False, "devices": 0,
                                   "initial_pool_size": 6 * GIB, "maximum_pool_size": 6 * GIB}]
    assert record["max_pool_size"] == 6 * GIB
    fake_gpu.calls.clear()
    kg.setup_rmm("pool", "2GiB", "6GiB")
    assert fake_gpu.reinits()[0]["initial_pool_size"] == 2 * GIB


def test_async_is_capped_by_a_limiting_adaptor(fake_gpu) -> None:  # type: ignore[no-untyped-def]
    fake_gpu.rmm.mr.LimitingResourceAdaptor = lambda upstream, allocation_limit: ("limit", upstream, allocation_limit)
    kg.setup_rmm("async", None, "4GiB")
    assert ("set_resource", ("limit", ("async", {}), 4 * GIB)) in fake_gpu.calls


def test_without_rmm_cupys_own_pool_is_limited(fake_gpu, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    limits: list[int] = []
    fake_gpu.pool.set_limit = lambda size: limits.append(size)
    monkeypatch.setitem(sys.modules, "rmm", None)  # rmm not importable: CuPy's allocator
    record = kg.setup_rmm("pool", None, "3GiB")
    assert record["applied"] == "cupy-default" and limits == [3 * GIB] and record["max_pool_size"] == 3 * GIB


def test_managed_memory_is_not_capped(fake_gpu) -> None:  # type: ignore[no-untyped-def]
    record = kg.setup_rmm("managed", None, "3GiB")
    assert "maximum_pool_size" not in fake_gpu.reinits()[0] and record["max_pool_size"] is None


def test_the_setup_cell_carries_the_cap_and_a_bad_one_is_a_usage_error() -> None:
    opts = guard.GuardOptions(rmm_max_pool_size="5GiB")
    assert "'max_pool_size': '5GiB'" in (guard.setup_cell_source(opts, {"visible": True}) or "")
    parser = argparse.ArgumentParser()
    guard.add_arguments(parser)
    with pytest.raises(errors.ConfigError, match="--rmm-max-pool-size"):
        guard.options_from_args(parser.parse_args(["--rmm-max-pool-size", "lots"]))
