"""The GPU guard, as execute sees it: options, preflight, the setup cell,
telemetry and the post-run notebook metadata.

The work lives in `gpuflow.gpu.devices` (runner-side facts), `gpuflow._embedded.kernel_guard`
(what runs in the kernel), `gpuflow._embedded.lite` and `gpuflow.gpu.telemetry`; this
module joins them behind the names `gpuflow.execute` calls. See docs/gpu.md.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuflow._embedded import kernel_guard as _kernel_guard
from gpuflow._embedded import lite as _lite
from gpuflow.core.errors import ConfigError
from gpuflow.core.fsutil import atomic_write_text
from gpuflow.gpu import devices
from gpuflow.notebook.prepare import GUARD_TAG  # the tag prepare gives the injected cell

GPU_POLICIES = ("auto", "require", "off")
RMM_POLICIES = _kernel_guard.POLICIES


@dataclass(frozen=True, kw_only=True)
class GuardOptions:
    gpu: str = "auto"
    rmm: str = "auto"
    rmm_pool_size: str | None = None
    rmm_max_pool_size: str | None = None  # the cap `gpuflow run --pack` gives a notebook sharing a GPU
    lite: bool = False
    max_cells: int = 50_000
    max_genes: int = 10_000
    seed: int = 0
    telemetry: bool = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("GPU guard")
    g.add_argument("--gpu", choices=GPU_POLICIES, default="auto",
                   help="require: exit 4 without a visible CUDA device; auto: warn and run on the CPU; off: no checks")
    g.add_argument("--rmm", choices=RMM_POLICIES, default="auto",
                   help="RMM policy set up in the kernel (auto = pool); `notebook` lets the notebook's own "
                        "rmm.reinitialize calls decide, every other policy is enforced over them")
    g.add_argument("--rmm-pool-size", default=None, help="initial pool size: 80%% of the device, 20GiB, bytes")
    g.add_argument("--rmm-max-pool-size", default=None,
                   help="cap on the notebook's memory pool (RMM's maximum_pool_size; CuPy's pool limit "
                        "without RMM): 12GiB or bytes; `gpuflow run --pack` sets it to the notebook's share")
    g.add_argument("--lite", action="store_true", help="subsample every AnnData the notebook loads, in memory")
    g.add_argument("--max-cells", type=int, default=50_000, help="lite: cells kept (default 50000)")
    g.add_argument("--max-genes", type=int, default=10_000, help="lite: genes kept (default 10000)")
    g.add_argument("--seed", type=int, default=0, help="lite: seed of the subsample (default 0)")
    g.add_argument("--no-telemetry", dest="telemetry", action="store_false", help="no telemetry.json")
    g.add_argument("--gpu-facts", type=Path, default=None, metavar="FILE",
                   help="reuse this preflight's facts (JSON) instead of checking again: gpuflow run "
                        "checks the GPU once per run")


def options_from_args(args: argparse.Namespace) -> GuardOptions:
    for flag, value in (("--rmm-pool-size", args.rmm_pool_size), ("--rmm-max-pool-size", args.rmm_max_pool_size)):
        if value:
            check_pool_size(value, flag)
    if args.max_cells < 1 or args.max_genes < 1:
        raise ConfigError("--max-cells and --max-genes must be positive")
    return GuardOptions(
        gpu=args.gpu, rmm=args.rmm, rmm_pool_size=args.rmm_pool_size, rmm_max_pool_size=args.rmm_max_pool_size,
        lite=args.lite,
        max_cells=args.max_cells, max_genes=args.max_genes, seed=args.seed,
        telemetry=args.telemetry,
    )


def check_pool_size(text: str, flag: str = "--rmm-pool-size") -> None:
    try:
        _kernel_guard.parse_size(text, total=1 << 40)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def preflight(opts: GuardOptions, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Runner-side device check before a kernel starts; raises NoGPUError
    under `--gpu require` when no device is visible. Returns the facts.
    `known`: the facts of a check already made for this run (`gpuflow run`
    checks once and passes them to each notebook's execute)."""
    return start_preflight(opts, known).settle()


def start_preflight(opts: GuardOptions, known: Mapping[str, Any] | None = None) -> devices.Preflight:
    """`preflight` whose driver probe may still run: `.facts` now, `.settle()`
    (which raises under require) once the caller's kernel is up."""
    if known is not None and opts.gpu != "off" and known.get("visible") is not None:
        return devices.Preflight.known(opts.gpu, {**known, "gpu_policy": opts.gpu, "reused": True})
    return devices.Preflight.start(opts.gpu)


def read_facts(path: Path | None) -> dict[str, Any] | None:
    """Facts written by `write_facts`; None when there is no (readable) file,
    and then execute checks for itself."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_facts(facts: Mapping[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(dict(facts), default=str))


def _embedded(module: Any, var: str) -> str:
    # the fallback when gpuflow is not importable in the kernel: the very
    # source of the module, exec'd into a fresh module object
    src = inspect.getsource(module)
    return (f"    {var} = _t.ModuleType({module.__name__!r})\n"
            f"    exec(compile({src!r}, {module.__name__!r}, 'exec'), {var}.__dict__)\n")


def cell_stats_path(opts: GuardOptions, facts: dict[str, Any]) -> Path | None:
    """Where the kernel writes its per-cell RMM rows for telemetry to read,
    or None when there is no telemetry or no GPU: one fresh file per execute
    call, passed to `setup_cell_source` and then to `telemetry`."""
    if not opts.telemetry or not facts.get("visible"):
        return None
    return Path(tempfile.gettempdir()) / f"gpuflow-cells-{uuid.uuid4().hex}.jsonl"


def setup_cell_source(opts: GuardOptions, facts: dict[str, Any], cell_stats: Path | None = None,
                      *, embed: bool = False) -> str | None:
    """Source of the GPU guard cell, or None when there is nothing to do
    (`--gpu off` without `--lite`). The kernel writes per-cell RMM rows to
    `cell_stats` (see `cell_stats_path`). The plain cell is a few lines that
    import the guard from gpuflow in the kernel; `embed=True` gives the one the
    engine runs instead when the kernel cannot import gpuflow: the guard's own
    source, exec'd."""
    if opts.gpu == "off" and not opts.lite:
        return None
    stats = str(cell_stats) if cell_stats is not None else None
    config = {
        "policy": opts.rmm, "pool_size": opts.rmm_pool_size, "max_pool_size": opts.rmm_max_pool_size,
        "gpu_visible": facts.get("visible"),
        "reason": "; ".join(facts.get("checks", [])) if facts.get("visible") is False else None,
        "lite": {"max_cells": opts.max_cells, "max_genes": opts.max_genes, "seed": opts.seed} if opts.lite else None,
        "cell_stats": stats,
    }
    head = "# gpuflow GPU guard (injected; runs first, outside the notebook's history; see docs/gpu.md)\n"
    # the semicolon: the record is printed by the guard itself, not echoed as the cell's value
    call = f"_gpuflow_guard.run_setup({config!r}, lite={'_gpuflow_lite' if opts.lite else 'None'});\n"
    if not embed:
        lite = "import gpuflow._embedded.lite as _gpuflow_lite\n" if opts.lite else ""
        return head + "import gpuflow._embedded.kernel_guard as _gpuflow_guard\n" + lite + call
    lines = [
        "try:",
        "    import gpuflow._embedded.kernel_guard as _gpuflow_guard",
        "    import gpuflow._embedded.lite as _gpuflow_lite",
        "except ImportError:",
        "    import types as _t",
    ]
    body = head + "\n".join(lines) + "\n" + _embedded(_kernel_guard, "_gpuflow_guard")
    body += _embedded(_lite, "_gpuflow_lite") if opts.lite else ""
    return body + call


def describe(guard: dict[str, Any]) -> str:
    """One line saying what the guard did: policy, what was applied, the
    device, the fallback; for the log and the HTML report."""
    found = guard.get("device")
    device: dict[str, Any] = found if isinstance(found, dict) else {}
    parts = [f"policy {guard.get('policy')}", f"applied {guard.get('applied') or 'nothing'}"]
    if device.get("name"):
        parts.append(f"on {device['name']}")
    if guard.get("pool_size"):
        parts.append(f"initial pool {int(guard['pool_size']):,} bytes")
    if guard.get("fallback"):
        parts.append(f"fallback: {guard['fallback']}")
    if guard.get("lite"):
        parts.append("lite mode on")
    if isinstance(guard.get("setup_s"), (int, float)):
        parts.append(f"took {guard['setup_s']:.2f}s")
    skipped = [e for e in guard.get("events", []) if isinstance(e, dict) and e.get("action") == "skipped"]
    if skipped:
        parts.append(f"{len(skipped)} rmm.reinitialize call(s) of the notebook skipped")
    return "gpuflow GPU guard: " + "; ".join(parts)


@contextlib.contextmanager
def telemetry(opts: GuardOptions, path: Path, cell_stats: Path | None = None,
              nb: Any = None) -> Iterator[None]:
    """Sample the GPU while the block runs; write `path` if there is a GPU,
    with the per-cell rows the kernel wrote to `cell_stats` (then removed)
    and the cells' start and end times from `nb` (for the chart's boundaries)."""
    if not opts.telemetry or opts.gpu == "off":
        yield
        return
    from gpuflow.gpu import telemetry as _telemetry

    try:
        with _telemetry.sample(path, cell_stats=cell_stats, spans=lambda: cell_spans(nb)):
            yield
    finally:
        if cell_stats is not None:
            cell_stats.unlink(missing_ok=True)


def finalize_notebook(nb: Any) -> dict[str, Any]:
    """Copy what the guard cell reported into the notebook's metadata:
    nb.metadata.gpuflow.guard = {policy, applied, pool_size, fallback, ...,
    events: [the notebook's own rmm.reinitialize calls, as guarded]}."""
    guard: dict[str, Any] = {}
    events: list[Any] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = out.get("data", {}).get(_kernel_guard.MIMETYPE) if out.get("output_type") == "display_data" else None
            if not isinstance(data, dict):
                continue
            if "event" in data:
                events.append(data["event"])
            elif not guard:
                guard = dict(data)
    if guard or events:
        guard["events"] = events
        nb.metadata.setdefault("gpuflow", {})["guard"] = guard
    return guard


def cell_spans(nb: Any) -> list[dict[str, Any]]:
    """{cell: In [n], start, end} in seconds since the epoch, from the times
    papermill records in each executed cell's metadata."""
    from datetime import datetime

    spans = []
    for cell in getattr(nb, "cells", None) or []:
        meta = cell.get("metadata", {}).get("papermill", {})
        if cell.get("execution_count") is None or not meta.get("start_time") or not meta.get("end_time"):
            continue
        try:
            start, end = (datetime.fromisoformat(str(meta[k]).replace("Z", "+00:00")).timestamp()
                          for k in ("start_time", "end_time"))
        except ValueError:
            continue
        spans.append({"cell": cell["execution_count"], "start": round(start, 3), "end": round(end, 3)})
    return spans


def for_report(nb: Any) -> Any:
    """The notebook as its HTML report shows it: the GPU guard cell (its code,
    and the embedded module source when the kernel lacked gpuflow) becomes one
    line saying what the guard did. `nb` is changed in place and returned."""
    import html

    import nbformat

    guard = nb.metadata.get("gpuflow", {}).get("guard")
    cells = []
    for cell in nb.cells:
        if GUARD_TAG not in cell.get("metadata", {}).get("tags", []):
            cells.append(cell)
        elif isinstance(guard, dict) and guard:
            line = nbformat.v4.new_markdown_cell(f"<small>{html.escape(describe(guard))}</small>")
            line.metadata["tags"] = [GUARD_TAG]
            cells.append(line)
    nb.cells = cells
    return nb
