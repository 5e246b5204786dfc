"""The kernel a notebook runs in: its environment, and stopping it for sure.

The environment is handed to the kernel manager per start (`env=`), never by
changing `os.environ`: `gpuflow run` executes notebooks in threads at once,
each pinned to its own GPU with CUDA_VISIBLE_DEVICES.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Mapping
from typing import Any

from gpuflow.core import secrets


def kernel_env(base: Mapping[str, str] | None = None, pass_env: Iterable[str] = ()) -> dict[str, str]:
    """The kernel's environment: `base` (default `os.environ`) without its
    secrets (see core/secrets.py), except those in `pass_env`. A notebook's
    outputs, and the HTML made from them, are artifacts that get uploaded,
    and `%env` or a traceback prints variables."""
    return secrets.child_env(base, pass_env)


def withheld(base: Mapping[str, str] | None = None, pass_env: Iterable[str] = ()) -> list[str]:
    return secrets.withheld(base, pass_env)


def new_manager(kernel_name: str) -> Any:
    import zmq
    from jupyter_client.manager import AsyncKernelManager

    # gpuflow owns this manager (nbclient then leaves the kernel to us), so it can
    # read the kernel's exit status and kill its process group for sure
    km = AsyncKernelManager(kernel_name=kernel_name)
    if km.has_trait("transport_encryption") and zmq.has("curve"):
        # CurveZMQ where jupyter_client and the kernelspec support it: on a
        # shared runner, other users cannot read a notebook's traffic on its ports
        km.transport_encryption = "auto"
    return km


def pid_and_group(km: Any) -> tuple[int | None, int | None]:
    provisioner = getattr(km, "provisioner", None)
    return getattr(provisioner, "pid", None), getattr(provisioner, "pgid", None)


def kill_now(km: Any, sig: int = signal.SIGKILL) -> bool:
    """Signal the kernel's whole process group (its children too). Safe to call
    from a signal handler or another thread: no event loop is involved."""
    pid, pgid = pid_and_group(km)
    try:
        if pgid:
            os.killpg(pgid, sig)
        elif pid:
            os.kill(pid, sig)
        else:
            return False
    except (ProcessLookupError, PermissionError):
        return False
    return True


def exit_status(km: Any) -> int | None:
    """The kernel process's return code (negative: killed by that signal)."""
    process = getattr(getattr(km, "provisioner", None), "process", None)
    return process.poll() if process is not None else None


def describe_death(status: int | None) -> str:
    if status is None:
        return "it stopped answering"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        hint = " (out of memory?)" if -status == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"it exited with status {status}"


def shutdown(km: Any, *, interrupt: bool = False) -> None:
    """Stop the kernel and remove its connection file; never raises, never waits long."""
    from jupyter_core.utils import ensure_async, run_sync

    async def stop() -> None:
        try:
            if interrupt and await km.is_alive():
                await km.interrupt_kernel()
            if await km.is_alive():
                await km.shutdown_kernel(now=True)
        finally:
            await ensure_async(km.cleanup_resources())

    try:
        run_sync(stop)()
    except Exception:  # the kernel may be half-started or gone; kill what is left
        kill_now(km)


def cancel_pending_tasks() -> None:
    """Cancel the polling tasks nbclient leaves behind when a cell is abandoned
    (timeout, dead kernel): they would otherwise wake up in the next run.

    They live on the loop that `run_sync` gave nbclient: this thread's own
    loop, or, inside a running Jupyter kernel (whose loop is busy running the
    calling cell), jupyter_core's runner loop in a helper thread. Cancelling
    through `run_sync` reaches the same loop either way and never touches the
    kernel's own tasks.
    """
    import asyncio

    from jupyter_core.utils import run_sync

    async def cancel() -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    run_sync(cancel)()
