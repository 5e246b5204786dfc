"""The GPU guard as it runs INSIDE the notebook kernel: RMM policies, the
guard around the notebook's own `rmm.reinitialize`, per-cell RMM statistics.

This module is self-contained on purpose (stdlib only at import, no gpuflow
imports): when gpuflow is not importable in the kernel, the injected setup
cell embeds this very file (`inspect.getsource`) and execs it, so there is
one implementation whether or not gpuflow is installed there.
Public entry point for notebook users: `gpuflow.gpu.setup_rmm`.
"""
from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

POLICIES = ("auto", "pool", "managed", "async", "off", "notebook")
MIMETYPE = "application/vnd.gpuflow.guard+json"
NO_DEVICE = "no CUDA device visible"
PREFIX = "gpuflow-guard:"

_UNITS = {
    "": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}

# What the guard did in this kernel; `gpuflow.gpu.guard.finalize_notebook` copies
# the display_data carrying it into the output notebook's metadata.
STATE: dict[str, Any] = {"policy": None, "enforce": False, "fallback": None, "events": []}


def parse_size(text: str | int | None, total: int | None = None) -> int | None:
    """'80%' (of `total`), '20GiB', '512MB', '1073741824' -> bytes, rounded
    down to 256 bytes, which RMM requires of pool sizes. None/'' -> None."""
    if text is None or str(text).strip() == "":
        return None
    s = str(text).strip()
    if s.endswith("%"):
        pct = float(s[:-1])
        if not 0 < pct <= 100:
            raise ValueError(f"pool size {s!r}: a percentage must be in (0, 100]")
        if total is None:
            raise ValueError(f"pool size {s!r}: a percentage needs the device's total memory")
        value = total * pct / 100
    else:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", s)
        if not m or m.group(2).upper() not in _UNITS:
            raise ValueError(f"pool size {s!r}: use bytes, e.g. 20GiB, 512MB, or a percentage like 80%")
        value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    return int(value) // 256 * 256


def describe_failure(exc: BaseException) -> str:
    """One line for an RMM/CUDA failure. RMM's own bug (`warnings.warn(e.msg)`
    on a CUDARuntimeError that has no `.msg`) is raised exactly when no device
    is visible, so it is reported as that."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AttributeError) and "CUDARuntimeError" in str(exc) and "msg" in str(exc):
        return f"{NO_DEVICE} (RMM raised {text})"
    if "cudaErrorNoDevice" in text or "CUDA_ERROR_NO_DEVICE" in text or "no CUDA-capable device" in text:
        return f"{NO_DEVICE} ({text})"
    return text


def say(message: str) -> None:
    print(f"{PREFIX} {message}", flush=True)


def emit(record: dict[str, Any]) -> None:
    """Show `record` in the cell output: JSON for gpuflow, text for people."""
    try:
        from IPython.display import display
    except ImportError:
        return
    text = f"{PREFIX} " + json.dumps(record, sort_keys=True, default=str)
    display({MIMETYPE: json.loads(json.dumps(record, default=str)), "text/plain": text}, raw=True)


def _import(name: str) -> Any:
    try:
        return __import__(name, fromlist=["_"])
    except Exception:  # ImportError, or a CUDA init failure at import
        return None


def device_info(cupy: Any) -> dict[str, Any]:
    """Device count and memory through CuPy; never raises."""
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:
        return {"count": 0, "error": describe_failure(exc)}
    if count == 0:
        return {"count": 0, "error": NO_DEVICE}
    info: dict[str, Any] = {"count": count}
    try:
        free, total = cupy.cuda.runtime.memGetInfo()
        info.update(free=int(free), total=int(total))
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        info["name"] = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:
        info["error"] = describe_failure(exc)
    return info


def default_allocator(cupy: Any) -> None:
    """Back to CuPy's own pooled allocator (the fallback after a failure)."""
    try:
        cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)
    except Exception:
        pass


def _rmm_allocator() -> Any:
    mod = _import("rmm.allocators.cupy")
    return getattr(mod, "rmm_cupy_allocator", None)


def original_reinitialize(rmm: Any) -> Any:
    fn = rmm.reinitialize
    return getattr(fn, "__gpuflow_original__", fn)


def _apply(policy: str, rmm: Any, cupy: Any, size: int | None, cap: int | None = None) -> None:
    reinit = original_reinitialize(rmm)
    # pool OR managed, never both (rapids_singlecell's advice: fragmentation)
    if policy == "pool":
        kwargs: dict[str, Any] = {}
        if cap is not None:
            # RMM's default first pool (half the device) may exceed the cap: start at the cap at most
            kwargs = {"initial_pool_size": min(size, cap) if size else cap, "maximum_pool_size": cap}
        else:
            kwargs = {"initial_pool_size": size}
        reinit(pool_allocator=True, managed_memory=False, devices=0, **kwargs)
    elif policy == "managed":
        reinit(pool_allocator=False, managed_memory=True, devices=0)
    elif policy == "async":
        kwargs = {"initial_pool_size": size} if size else {}
        resource = rmm.mr.CudaAsyncMemoryResource(**kwargs)
        if cap is not None:
            resource = rmm.mr.LimitingResourceAdaptor(resource, allocation_limit=cap)
        rmm.mr.set_current_device_resource(resource)
    cupy.cuda.set_allocator(_rmm_allocator())


def cap_cupy_pool(cupy: Any, cap: int | None) -> bool:
    """Limit CuPy's own memory pool (in use when RMM is not): past the cap,
    CuPy raises OutOfMemoryError in this kernel, not in a neighbour's."""
    if cap is None:
        return False
    try:
        cupy.get_default_memory_pool().set_limit(size=cap)
    except Exception:
        return False
    return True


def setup_rmm(policy: str = "pool", pool_size: str | int | None = None,
              max_pool_size: str | int | None = None) -> dict[str, Any]:
    """Set up RMM for CuPy in THIS process with one policy and guard later
    `rmm.reinitialize` calls; never raises for a missing or failing GPU.

    policy: auto (= pool) | pool | managed | async | off | notebook.
    pool_size: '80%', '20GiB' or bytes (pool/async initial size).
    max_pool_size: a cap on the pool (pool, async; CuPy's own pool when RMM
    is not used); managed memory and the notebook's own policy are not capped.
    Returns what was done: policy, applied, pool_size, max_pool_size, fallback, device.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown RMM policy {policy!r}; one of {', '.join(POLICIES)}")
    record: dict[str, Any] = {"policy": policy, "applied": None, "pool_size": None, "fallback": None,
                              "max_pool_size": None}
    STATE.update(policy=policy, enforce=policy != "notebook", fallback=None, cap=None)
    cupy, rmm = _import("cupy"), _import("rmm")
    if rmm is not None:
        guard_reinitialize(rmm, cupy)
    if cupy is None:
        return _fallback(record, None, "cupy not importable: running without a GPU allocator")
    device = device_info(cupy)
    record["device"] = device
    if device["count"] == 0:
        return _fallback(record, cupy, device.get("error", NO_DEVICE))
    try:
        cap = parse_size(max_pool_size, device.get("total"))
    except ValueError as exc:
        return _fallback(record, cupy, str(exc))
    STATE["cap"] = cap
    if policy == "notebook":
        say("policy notebook: the notebook's own rmm.reinitialize calls decide (guarded)")
        record["applied"] = "notebook"
        return record
    if policy == "off" or rmm is None:
        reason = None if policy == "off" else "rmm not importable"
        if reason:
            return _fallback(record, cupy, reason)
        default_allocator(cupy)
        if cap_cupy_pool(cupy, cap):
            record["max_pool_size"] = cap
        say("policy off: CuPy's default allocator; the notebook's rmm.reinitialize calls are skipped")
        record["applied"] = "off"
        return record
    applied = "pool" if policy == "auto" else policy
    try:
        size = parse_size(pool_size, device.get("total")) if applied in ("pool", "async") else None
        _apply(applied, rmm, cupy, size, cap if applied in ("pool", "async") else None)
    except Exception as exc:
        return _fallback(record, cupy, describe_failure(exc))
    record.update(applied=applied, pool_size=size, max_pool_size=cap if applied in ("pool", "async") else None)
    shown = f", initial pool {size:,} bytes" if size else ""
    shown += f", pool capped at {cap:,} bytes" if record["max_pool_size"] else ""
    say(f"RMM {applied}{shown} on {device.get('name', 'GPU 0')}; CuPy allocates through RMM")
    return record


def _fallback(record: dict[str, Any], cupy: Any, reason: str) -> dict[str, Any]:
    if cupy is not None:
        default_allocator(cupy)
    STATE["fallback"] = reason
    capped = cupy is not None and cap_cupy_pool(cupy, STATE.get("cap"))
    record.update(applied="cupy-default" if cupy is not None else None, fallback=reason,
                  max_pool_size=STATE.get("cap") if capped else None)
    shown = f", its pool capped at {STATE['cap']:,} bytes" if capped else ""
    say(f"WARNING: RMM not set up: {reason}; using CuPy's default allocator{shown}")
    return record


def guard_reinitialize(rmm: Any, cupy: Any) -> None:
    """Replace `rmm.reinitialize` so the notebook's own calls cannot crash it.

    Under an enforced policy (all but `notebook`) the call is skipped with a
    note: the policy chosen on the command line wins. Under `notebook` it runs,
    and a failure becomes a warning plus CuPy's default allocator.
    """
    original = original_reinitialize(rmm)

    def reinitialize(*args: Any, **kwargs: Any) -> None:
        shown = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
        if STATE["enforce"]:
            say(f"the notebook's rmm.reinitialize({shown}) was skipped: policy "
                f"{STATE['policy']} is enforced (--rmm notebook lets the notebook decide)")
            _event({"call": f"reinitialize({shown})", "action": "skipped", "policy": STATE["policy"]})
            return None
        if kwargs.get("pool_allocator") and kwargs.get("managed_memory"):
            say("WARNING: pool_allocator=True with managed_memory=True; rapids_singlecell advises one or the other")
        try:
            original(*args, **kwargs)
        except Exception as exc:
            reason = describe_failure(exc)
            STATE["fallback"] = reason
            if cupy is not None:
                default_allocator(cupy)
            say(f"WARNING: rmm.reinitialize({shown}) failed: {reason}; using CuPy's default allocator")
            _event({"call": f"reinitialize({shown})", "action": "failed", "fallback": reason})
            return None
        STATE["fallback"] = None
        _event({"call": f"reinitialize({shown})", "action": "applied"})
        _restart_statistics(rmm)
        return None

    reinitialize.__gpuflow_original__ = original  # type: ignore[attr-defined]
    reinitialize.__doc__ = original.__doc__
    rmm.reinitialize = reinitialize
    if cupy is not None:
        _guard_set_allocator(cupy)


def _guard_set_allocator(cupy: Any) -> None:
    # After a failed reinitialize the notebook's next line is usually
    # `cp.cuda.set_allocator(rmm_cupy_allocator)`; keep the fallback then.
    set_allocator = getattr(cupy.cuda.set_allocator, "__gpuflow_original__", cupy.cuda.set_allocator)

    def guarded(allocator: Any = None) -> None:
        if STATE["fallback"] and allocator is not None and allocator is _rmm_allocator():
            say("the notebook's cupy.cuda.set_allocator(rmm_cupy_allocator) was skipped: RMM is not set up")
            return None
        set_allocator(allocator)
        return None

    guarded.__gpuflow_original__ = set_allocator  # type: ignore[attr-defined]
    cupy.cuda.set_allocator = guarded


def _event(event: dict[str, Any]) -> None:
    STATE["events"].append(event)
    emit({"event": event})


# -- per-cell peak bytes from rmm.statistics -----------------------------------
def _restart_statistics(rmm: Any) -> None:
    if STATE.get("cell_stats"):
        stats = _import("rmm.statistics")
        try:
            stats.enable_statistics()
        except Exception:
            pass


def record_cell_stats(path: str) -> bool:
    """Append {cell, peak_bytes, total_bytes} per executed cell to `path`
    (JSON lines) through IPython hooks and rmm.statistics."""
    stats = _import("rmm.statistics")
    shell = _ipython()
    if stats is None or shell is None:
        return False
    try:
        stats.enable_statistics()
    except Exception as exc:
        say(f"per-cell RMM statistics off: {describe_failure(exc)}")
        return False
    STATE["cell_stats"] = path

    def pre(info: Any = None) -> None:
        try:
            stats.push_statistics()
        except Exception:
            pass

    def post(result: Any = None) -> None:
        try:
            s = stats.pop_statistics()
        except Exception:
            return
        if s is None:
            return
        # a Statistics dataclass in current RMM, a dict of counters in older ones
        def field(key: str) -> Any:
            return s[key] if isinstance(s, dict) else getattr(s, key)

        row = {"cell": getattr(result, "execution_count", None),
               "peak_bytes": int(field("peak_bytes")), "total_bytes": int(field("total_bytes"))}
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    shell.events.register("pre_run_cell", pre)
    shell.events.register("post_run_cell", post)
    return True


def _ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def run_setup(config: dict[str, Any], lite: Any = None) -> dict[str, Any]:
    """What the injected setup cell does: lite hooks, RMM, statistics, report."""
    record: dict[str, Any] = {"gpu_visible": config.get("gpu_visible")}
    if config.get("lite"):
        record["lite"] = lite.install(**config["lite"]) if lite is not None else "lite module missing"
    if config.get("gpu_visible") is False:
        say(f"no GPU visible ({config.get('reason') or NO_DEVICE}): running on the CPU; RMM not set up")
        STATE.update(policy=config["policy"], enforce=config["policy"] != "notebook", fallback=NO_DEVICE)
        rmm = _import("rmm") if _installed("rmm") else None
        if rmm is not None:
            guard_reinitialize(rmm, _import("cupy") if _installed("cupy") else None)
            say("the notebook's own rmm.reinitialize calls are guarded")
        record.update(policy=config["policy"], applied=None, fallback=NO_DEVICE)
    else:
        record.update(setup_rmm(config["policy"], config.get("pool_size"), config.get("max_pool_size")))
        if config.get("cell_stats") and record.get("applied") not in (None, "cupy-default", "off"):
            record["cell_stats"] = record_cell_stats(config["cell_stats"])
    emit(record)
    return record


def _installed(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


if __name__ == "__main__":  # pragma: no cover - handy on a GPU box
    print(json.dumps(setup_rmm(sys.argv[1] if len(sys.argv) > 1 else "pool", os.environ.get("POOL")), indent=2))
