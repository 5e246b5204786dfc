"""The GPU: runner-side device facts, the guard execute injects, telemetry.

`from gpuflow.gpu import setup_rmm` is the entry point for a person inside a
notebook; it is the same code the injected guard cell runs.
"""
from __future__ import annotations

from gpuflow._embedded.kernel_guard import setup_rmm

__all__ = ["setup_rmm"]
