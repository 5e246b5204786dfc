"""Lite mode: every AnnData the notebook loads is subsampled in memory.

The Tekton lite hook this replaces patched `anndata.read_h5ad` only, while the
blueprint loads with `sc.read()` (scanpy binds `read_h5ad` at import), and it
wrote the subsample back over the cached dataset. Here every entry
point is wrapped, including names other modules bound at import, the
generator is seeded, and nothing is ever written: the subsample is a copy.

Self-contained (stdlib at import, no gpuflow imports) so the setup cell can
embed it when gpuflow is not importable in the kernel.
"""
from __future__ import annotations

import sys
import threading
import warnings
from typing import Any

_MODULE_PREFIXES = ("anndata", "scanpy")
_NAMES = ("read_h5ad", "read")
_local = threading.local()


def subsample(adata: Any, *, max_cells: int, max_genes: int, seed: int) -> Any:
    """A seeded, in-memory subsample of `adata` (a copy; the input and its
    file are untouched). Row and column order are kept."""
    import numpy as np

    if adata.n_obs <= max_cells and adata.n_vars <= max_genes:
        return adata
    rng = np.random.default_rng(seed)
    obs = np.sort(rng.choice(adata.n_obs, max_cells, replace=False)) if adata.n_obs > max_cells else slice(None)
    var = np.sort(rng.choice(adata.n_vars, max_genes, replace=False)) if adata.n_vars > max_genes else slice(None)
    view = adata[obs, var]
    # a backed AnnData's copy() would write a new file; to_memory() never does
    return view.to_memory() if getattr(adata, "isbacked", False) else view.copy()


def _wrap(fn: Any, limits: dict[str, int]) -> Any:
    def lite_reader(*args: Any, **kwargs: Any) -> Any:
        if getattr(_local, "inside", False):  # sc.read -> read_h5ad: subsample once
            return fn(*args, **kwargs)
        _local.inside = True
        try:
            adata = fn(*args, **kwargs)
        finally:
            _local.inside = False
        if not (hasattr(adata, "n_obs") and hasattr(adata, "n_vars")):
            return adata
        before = adata.shape
        adata = subsample(adata, **limits)
        print(f"gpuflow-lite: {fn.__module__}.{fn.__name__}: {before[0]:,} x {before[1]:,} -> "
              f"{adata.n_obs:,} cells x {adata.n_vars:,} genes (seed {limits['seed']})", flush=True)
        return adata

    lite_reader.__gpuflow_original__ = fn  # type: ignore[attr-defined]
    lite_reader.__name__ = getattr(fn, "__name__", "read")
    lite_reader.__doc__ = fn.__doc__
    return lite_reader


def install(*, max_cells: int = 50_000, max_genes: int = 10_000, seed: int = 0) -> list[str]:
    """Wrap every AnnData reader reachable from anndata/scanpy modules,
    including names bound by `from ... import read_h5ad`. Returns the names
    patched. Calling it again updates the limits (no double wrapping)."""
    for name in ("anndata", "anndata.io", "scanpy", "scanpy.readwrite"):
        try:
            __import__(name)
        except Exception:  # not installed, or an old layout without anndata.io
            pass
    limits = {"max_cells": max_cells, "max_genes": max_genes, "seed": seed}
    wrapped: dict[int, Any] = {}
    patched: list[str] = []
    for mod_name, module in sorted(sys.modules.items()):
        if module is None or mod_name.split(".")[0] not in _MODULE_PREFIXES:
            continue
        for attr in _NAMES:
            with warnings.catch_warnings():  # deprecated module attributes warn on access
                warnings.simplefilter("ignore")
                fn = getattr(module, attr, None)
            if not callable(fn):
                continue
            original = getattr(fn, "__gpuflow_original__", fn)
            if getattr(original, "__module__", "").split(".")[0] not in _MODULE_PREFIXES:
                continue  # e.g. a class or a re-exported non-reader
            key = id(original)
            if key not in wrapped:
                wrapped[key] = _wrap(original, limits)
            setattr(module, attr, wrapped[key])
            patched.append(f"{mod_name}.{attr}")
    print(f"gpuflow-lite: at most {max_cells:,} cells x {max_genes:,} genes (seed {seed}); "
          f"patched {len(patched)} readers", flush=True)
    return patched


def uninstall() -> None:
    """Undo `install` (tests, or a notebook that wants the full data back)."""
    for mod_name, module in list(sys.modules.items()):
        if module is None or mod_name.split(".")[0] not in _MODULE_PREFIXES:
            continue
        for attr in _NAMES:
            fn = getattr(module, attr, None)
            original = getattr(fn, "__gpuflow_original__", None)
            if original is not None:
                setattr(module, attr, original)
