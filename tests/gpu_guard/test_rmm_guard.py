"""The kernel-side guard against fake rmm/cupy module objects (the GPU is
what cannot exist here): policies, sizes, the reinitialize guard, and RMM's
own `.msg` AttributeError reported as 'no CUDA device visible'."""
from __future__ import annotations

import sys

import nbformat
import pytest

from gpuflow import gpu
from gpuflow._embedded import kernel_guard as kg
from gpuflow.gpu import guard

MSG_BUG = AttributeError("'CUDARuntimeError' object has no attribute 'msg'")


@pytest.mark.parametrize("text, total, expected", [
    ("20GiB", None, 20 << 30), ("512MB", None, 512_000_000 // 256 * 256), ("1000", None, 768),
    ("50%", 80 << 30, 40 << 30), ("80%", 1000, 768), (None, None, None), ("", None, None),
])
def test_parse_size(text: str | None, total: int | None, expected: int | None) -> None:
    assert kg.parse_size(text, total) == expected


@pytest.mark.parametrize("text", ["lots", "0%", "150%", "12 parsecs", "80%"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        kg.parse_size(text, None)


def test_public_api_is_the_one_implementation() -> None:
    assert gpu.setup_rmm is kg.setup_rmm


def test_pool_policy(fake_gpu) -> None:  # type: ignore[no-untyped-def]
    record = kg.setup_rmm("pool", "50%")
    assert fake_gpu.reinits() == [{"pool_allocator": True, "managed_memory": False,
                                   "initial_pool_size": 40 << 30, "devices": 0}]
    assert fake_gpu.allocators() == ["rmm-allocator"]
    assert record["applied"] == "pool" and record["pool_size"] == 40 << 30 and record["fallback"] is None


def test_auto_is_pool_and_managed_is_never_pool(fake_gpu) -> None:  # type: ignore[no-untyped-def]
    assert kg.setup_rmm("auto")["applied"] == "pool"
    fake_gpu.calls.clear()
    kg.setup_rmm("managed")
    assert fake_gpu.reinits() == [{"pool_allocator": False, "managed_memory": True, "devices": 0}]


def test_async_policy(fake_gpu) -> None:  # type: ignore[no-untyped-def]
    kg.setup_rmm("async", "1GiB")
    assert ("set_resource", ("async", {"initial_pool_size": 1 << 30})) in fake_gpu.calls
    assert fake_gpu.reinits() == []


def test_enforced_policy_skips_the_notebooks_call(fake_gpu, capsys) -> None:  # type: ignore[no-untyped-def]
    kg.setup_rmm("pool")
    import rmm  # the fake one, as the notebook would get it

    fake_gpu.calls.clear()
    rmm.reinitialize(managed_memory=True, pool_allocator=False, devices=0)
    assert fake_gpu.reinits() == []
    out = capsys.readouterr().out
    assert "rmm.reinitialize(managed_memory=True, pool_allocator=False, devices=0) was skipped" in out
    assert "policy pool is enforced" in out
    assert kg.STATE["events"][-1]["action"] == "skipped"


def test_off_policy_keeps_cupy_default(fake_gpu) -> None:  # type: ignore[no-untyped-def]
    record = kg.setup_rmm("off")
    # nothing set up, so CuPy is not even asked: its allocator stays untouched
    assert record["applied"] == "off" and fake_gpu.allocators() == []
    import rmm

    rmm.reinitialize(pool_allocator=True)
    assert fake_gpu.reinits() == []


def test_off_policy_imports_nothing_and_guards_rmm_when_the_notebook_imports_it(
        tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    pkg = tmp_path / "rmm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("calls = []\ndef reinitialize(**kw):\n    calls.append(kw)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("rmm", "cupy"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    assert kg.setup_rmm("off")["applied"] == "off"
    assert "rmm" not in sys.modules and "cupy" not in sys.modules
    import rmm  # as the notebook would, after the guard ran

    rmm.reinitialize(pool_allocator=True)
    assert rmm.calls == []
    assert "was skipped: policy off is enforced" in capsys.readouterr().out


def test_notebook_policy_lets_the_notebook_decide(fake_gpu) -> None:  # type: ignore[no-untyped-def]
    assert kg.setup_rmm("notebook")["applied"] == "notebook"
    assert fake_gpu.reinits() == []
    import rmm

    rmm.reinitialize(managed_memory=True)
    assert fake_gpu.reinits() == [{"managed_memory": True}]


def test_msg_bug_becomes_no_device_and_a_fallback(fake_gpu, capsys) -> None:  # type: ignore[no-untyped-def]
    kg.setup_rmm("notebook")
    fake_gpu.reinit_error = MSG_BUG
    import cupy
    import rmm
    from rmm.allocators.cupy import rmm_cupy_allocator

    rmm.reinitialize(managed_memory=True)  # must not raise
    cupy.cuda.set_allocator(rmm_cupy_allocator)  # the notebook's next line: kept on the fallback
    out = capsys.readouterr().out
    assert "WARNING: rmm.reinitialize(managed_memory=True) failed: no CUDA device visible" in out
    assert "set_allocator(rmm_cupy_allocator) was skipped" in out
    assert fake_gpu.allocators() == ["cupy-default-malloc"]
    assert kg.STATE["fallback"].startswith("no CUDA device visible")


def test_failing_pool_falls_back(fake_gpu) -> None:  # type: ignore[no-untyped-def]
    fake_gpu.reinit_error = MemoryError("std::bad_alloc: out_of_memory: initial pool too large")
    record = kg.setup_rmm("pool", "100%")
    assert record["applied"] == "cupy-default"
    assert record["fallback"].startswith("MemoryError: std::bad_alloc")


def test_no_device_falls_back_without_touching_rmm(no_device_gpu) -> None:  # type: ignore[no-untyped-def]
    record = kg.setup_rmm("pool")
    assert record["fallback"].startswith("no CUDA device visible")
    assert no_device_gpu.reinits() == []
    import rmm

    no_device_gpu.reinit_error = MSG_BUG
    rmm.reinitialize(pool_allocator=True)  # enforced: skipped, so RMM's bug is never reached
    assert no_device_gpu.reinits() == []


def test_without_cupy_the_guard_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "cupy", None)
    monkeypatch.setitem(__import__("sys").modules, "rmm", None)
    record = kg.setup_rmm("pool")
    assert record["applied"] is None and "cupy not importable" in record["fallback"]


def test_unknown_policy_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown RMM policy"):
        kg.setup_rmm("fast")


def test_finalize_copies_the_guard_record_and_events() -> None:
    nb = nbformat.v4.new_notebook()
    first = nbformat.v4.new_code_cell("guard")
    first.outputs = [nbformat.v4.new_output("display_data", data={
        kg.MIMETYPE: {"policy": "pool", "applied": "pool", "pool_size": 1024, "fallback": None},
        "text/plain": "gpuflow-guard: ..."})]
    later = nbformat.v4.new_code_cell("rmm.reinitialize()")
    later.outputs = [nbformat.v4.new_output("display_data", data={
        kg.MIMETYPE: {"event": {"call": "reinitialize()", "action": "skipped"}}, "text/plain": "x"})]
    nb.cells = [first, nbformat.v4.new_code_cell("1"), later]
    guard.finalize_notebook(nb)
    assert nb.metadata["gpuflow"]["guard"] == {"policy": "pool", "applied": "pool", "pool_size": 1024,
                                               "fallback": None,
                                               "events": [{"call": "reinitialize()", "action": "skipped"}]}


def test_finalize_leaves_an_unguarded_notebook_alone() -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    guard.finalize_notebook(nb)
    assert "gpuflow" not in nb.metadata
