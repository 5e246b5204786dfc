"""The GPU guard, as execute sees it: options, preflight, the setup cell,
telemetry and the post-run notebook metadata.

STUB: the interface is fixed here so that `gpuflow.execute` can call it; the
GPU guard work (preflight, RMM policies, lite hooks, telemetry) fills it in.
"""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GPU_POLICIES = ("auto", "require", "off")
RMM_POLICIES = ("auto", "pool", "managed", "async", "off", "notebook")


@dataclass(frozen=True, kw_only=True)
class GuardOptions:
    gpu: str = "auto"
    rmm: str = "auto"
    rmm_pool_size: str | None = None
    lite: bool = False
    max_cells: int = 50_000
    max_genes: int = 10_000
    seed: int = 0
    telemetry: bool = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("GPU guard")
    g.add_argument("--gpu", choices=GPU_POLICIES, default="auto")
    g.add_argument("--rmm", choices=RMM_POLICIES, default="auto")
    g.add_argument("--rmm-pool-size", default=None)
    g.add_argument("--lite", action="store_true")
    g.add_argument("--max-cells", type=int, default=50_000)
    g.add_argument("--max-genes", type=int, default=10_000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-telemetry", dest="telemetry", action="store_false")


def options_from_args(args: argparse.Namespace) -> GuardOptions:
    return GuardOptions(
        gpu=args.gpu, rmm=args.rmm, rmm_pool_size=args.rmm_pool_size, lite=args.lite,
        max_cells=args.max_cells, max_genes=args.max_genes, seed=args.seed,
        telemetry=args.telemetry,
    )


def preflight(opts: GuardOptions) -> dict[str, Any]:
    """Runner-side device check before a kernel starts; raises NoGPUError
    under `--gpu require` when no device is visible. Returns the facts."""
    return {"gpu_policy": opts.gpu, "devices": []}


def setup_cell_source(opts: GuardOptions, facts: dict[str, Any]) -> str | None:
    """Source of the cell injected as the first code cell, or None."""
    return None


@contextlib.contextmanager
def telemetry(opts: GuardOptions, path: Path) -> Iterator[None]:
    """Sample the GPU while the block runs; write `path` if there is a GPU."""
    yield


def finalize_notebook(nb: Any) -> None:
    """Copy what the guard cell reported into the notebook's metadata."""
    return None
