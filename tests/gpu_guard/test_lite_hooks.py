"""Lite mode in-process through every entry point, with real anndata/scanpy:
seeded, subsampled in memory, and the source file never written."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuflow._embedded import lite
from gpuflow.core.fsutil import sha256_file


@pytest.fixture
def installed() -> Iterator[list[str]]:
    patched = lite.install(max_cells=100, max_genes=50, seed=0)
    yield patched
    lite.uninstall()


def _readers() -> dict[str, object]:
    import anndata
    import anndata.io
    import scanpy
    import scanpy.readwrite

    return {"anndata.read_h5ad": anndata.read_h5ad, "anndata.io.read_h5ad": anndata.io.read_h5ad,
            "scanpy.read_h5ad": scanpy.read_h5ad, "scanpy.read": scanpy.read,
            "scanpy.readwrite.read_h5ad": scanpy.readwrite.read_h5ad}


@pytest.mark.parametrize("entry", list(_readers()))
def test_every_entry_point_subsamples(installed: list[str], small_h5ad: Path, entry: str) -> None:
    before = (sha256_file(small_h5ad), os.stat(small_h5ad).st_mtime_ns)
    adata = _readers()[entry](small_h5ad)  # type: ignore[operator]
    assert adata.shape == (100, 50)
    assert (sha256_file(small_h5ad), os.stat(small_h5ad).st_mtime_ns) == before
    assert sorted(os.listdir(small_h5ad.parent)) == ["small.h5ad"]  # no cache or copy written beside it


def test_names_scanpy_bound_at_import_are_patched(installed: list[str]) -> None:
    # the Tekton hook missed these: scanpy does `from anndata.io import read_h5ad`
    assert {"scanpy.readwrite.read_h5ad", "scanpy.read", "anndata.io.read_h5ad"} <= set(installed)


def test_seeded_twice_gives_the_same_cells(small_h5ad: Path) -> None:
    import scanpy

    lite.install(max_cells=100, max_genes=50, seed=7)
    try:
        a, b = scanpy.read(small_h5ad), scanpy.read_h5ad(small_h5ad)
        lite.install(max_cells=100, max_genes=50, seed=8)
        c = scanpy.read(small_h5ad)
    finally:
        lite.uninstall()
    assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
    assert list(a.obs_names) != list(c.obs_names)
    assert scanpy.read(small_h5ad).shape == (300, 120)  # uninstalled: the full data again


def test_small_data_is_returned_as_is(small_h5ad: Path) -> None:
    import anndata

    lite.install(max_cells=10_000, max_genes=10_000, seed=0)
    try:
        assert anndata.read_h5ad(small_h5ad).shape == (300, 120)
    finally:
        lite.uninstall()


def test_backed_read_is_subsampled_in_memory(installed: list[str], small_h5ad: Path) -> None:
    import anndata

    before = sha256_file(small_h5ad)
    adata = anndata.read_h5ad(small_h5ad, backed="r")
    assert adata.shape == (100, 50) and not adata.isbacked
    assert sha256_file(small_h5ad) == before


def test_writing_the_subsample_goes_elsewhere(installed: list[str], small_h5ad: Path, tmp_path: Path) -> None:
    # blueprint 01 writes what it read back to ./h5; the source file stays whole
    import scanpy

    before = sha256_file(small_h5ad)
    scanpy.read(small_h5ad).write_h5ad(tmp_path / "copy.h5ad")
    assert sha256_file(small_h5ad) == before
