"""Whole suites on the CPU: selection, run types, requirements against the
preflight's recorded facts, findings, the history file, the packing decision
(a pure function of history and devices) and the pool's claims."""
from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from gpuflow.core import errors
from gpuflow.flow import history, pack, requirements, select
from gpuflow.flow.schedule import Claim, Pool, Slot, slots_for
from gpuflow.report import findings

GIB = 1 << 30


def write_nb(path: Path, meta: dict[str, Any] | None = None, outputs: list[Any] | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    if meta is not None:
        nb.metadata["gpuflow"] = meta
    cell = nbformat.v4.new_code_cell("x = 1")
    cell.outputs = [nbformat.from_dict(o) for o in outputs or []]
    nb.cells.append(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


# -- selection -------------------------------------------------------------------
def test_exclude_globs_match_paths_and_names() -> None:
    assert select.excluded("cuml/MNMG/kmeans.ipynb", ["*MNMG*"])
    assert select.excluded("a/b/slow_demo.ipynb", ["slow_*"])
    assert not select.excluded("a/fast.ipynb", ["slow_*", "b/*"])


def test_skip_marker_metadata_and_run_types(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    marked = write_nb(repo / "multi" / "deep" / "a.ipynb")
    (repo / "multi" / select.SKIP_MARKER).write_text("")
    assert select.skip_reason(marked, "multi/deep/a.ipynb", repo, {}, "ci") == "SKIP_CI_TESTING in multi/"
    plain = write_nb(repo / "b.ipynb")
    assert select.skip_reason(plain, "b.ipynb", repo, {"skip": "needs a dataset"}, "ci") == "needs a dataset"
    nightly = {"run_types": ["nightly", "weekly"]}
    assert select.skip_reason(plain, "b.ipynb", repo, nightly, "ci") == \
        "runs in nightly and weekly runs only; this is a ci run"
    assert select.skip_reason(plain, "b.ipynb", repo, nightly, "weekly") is None
    assert select.skip_reason(plain, "b.ipynb", repo, {}, "weekly") is None
    with pytest.raises(errors.ConfigError, match="run_types"):
        select.skip_reason(plain, "b.ipynb", repo, {"run_types": ["hourly"]}, "ci")


def test_metadata_is_read_from_the_notebook(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "a.ipynb", {"skip": "broken upstream", "requires": {"gpus": 2}})
    assert select.metadata(nb) == {"skip": "broken upstream", "requires": {"gpus": 2}}
    assert select.metadata(write_nb(tmp_path / "b.ipynb")) == {}
    (tmp_path / "c.ipynb").write_text("not json")
    assert select.metadata(tmp_path / "c.ipynb") == {}


# -- requirements, against facts shaped as gpuflow.gpu.devices.detect records them --
ONE_H100 = {"visible": True, "devices": [{"index": 0, "name": "NVIDIA H100", "memory_mib": 81559}],
            "cuda_version": "13.0", "runtime_devices": 1, "runtime_version": 13000}
NO_GPU = {"visible": False, "devices": [], "cuda_version": None, "runtime_devices": None}


def unmet(raw: dict[str, Any], facts: dict[str, Any], pinned: list[str] | None = None) -> str | None:
    req = requirements.parse(raw, "nb.ipynb")
    return requirements.unmet(req, facts, requirements.visible_devices(facts, pinned))


def test_requirements_against_recorded_facts() -> None:
    assert unmet({"gpus": 2}, ONE_H100) == "needs 2 GPUs; 1 visible"
    assert unmet({"gpus": 1}, NO_GPU) == "needs 1 GPU; 0 visible"
    assert unmet({"gpus": 1}, ONE_H100) is None
    assert unmet({"gpu_memory": "40GiB"}, ONE_H100) is None
    assert unmet({"gpu_memory": "100GiB"}, ONE_H100) == "needs 100.0 GiB per GPU; 79.6 GiB visible"
    assert unmet({"cuda": ">=12.4"}, ONE_H100) is None
    assert unmet({"cuda": "<13"}, ONE_H100) == "needs CUDA <13; 13.0 here"
    # the runtime's version when nvidia-smi gave none: 12040 is 12.4
    assert unmet({"cuda": ">=12.5"}, {**ONE_H100, "cuda_version": None, "runtime_version": 12040}) == \
        "needs CUDA >=12.5; 12.4 here"
    assert "did not record" in (unmet({"compute_capability": ">=8.0"}, ONE_H100) or "")
    with_cc = {**ONE_H100, "devices": [{**ONE_H100["devices"][0], "compute_capability": "9.0"}]}
    assert unmet({"compute_capability": ">=8.0"}, with_cc) is None
    assert unmet({"compute_capability": ">=10.0"}, with_cc) == "needs compute capability >=10.0; 9.0 here"
    # pinned GPUs are what a notebook can get
    two = {**ONE_H100, "devices": [{"index": 0, "memory_mib": 81559}, {"index": 1, "memory_mib": 81559}]}
    assert unmet({"gpus": 2}, two, pinned=["1"]) == "needs 2 GPUs; 1 visible"
    assert unmet({}, NO_GPU) is None


def test_requirements_config_overrides_metadata_and_bad_ones_say_where() -> None:
    req = requirements.for_notebook({"a": {"gpus": 1}}, "dir/a.ipynb", "a", {"requires": {"gpus": 2, "cuda": "12.4"}})
    assert (req.gpus, req.cuda) == (1, ">=12.4")
    for bad in ({"gpus": -1}, {"gpus": "two"}, {"cuda": "twelve"}, {"gpu_memory": "lots"}, {"gpu": 1}):
        with pytest.raises(errors.ConfigError, match="nb.ipynb"):
            requirements.parse(bad, "nb.ipynb")
    assert requirements.parse({"gpu_memory": "8GiB"}, "x").gpus == 1  # memory implies a GPU


# -- findings ----------------------------------------------------------------------
def test_findings_count_and_keep_examples_with_their_cell(tmp_path: Path) -> None:
    outputs = [
        {"output_type": "stream", "name": "stderr",
         "text": "/x/y.py:3: FutureWarning: the default will change\n  warnings.warn(\nplain stderr\n"},
        {"output_type": "stream", "name": "stdout", "text": "DeprecationWarning: old API\nfine\n"},
        {"output_type": "error", "ename": "ValueError", "evalue": "boom", "traceback": []},
    ]
    nb = write_nb(tmp_path / "out.ipynb", outputs=outputs)
    found = findings.scan(nb)
    assert found is not None
    assert (found.stderr_lines, found.warnings, found.errors) == (3, 2, 1)
    assert found.warning_examples[0] == findings.Example(cell=0, text="/x/y.py:3: FutureWarning: the default will change")
    assert found.error_examples[0].text == "ValueError: boom"
    assert findings.scan(tmp_path / "missing.ipynb") is None


def test_findings_ignore_injected_cells_and_keep_only_a_few() -> None:
    noisy = {"output_type": "stream", "name": "stderr", "text": "UserWarning: x\n" * 10}
    cells = [{"cell_type": "code", "metadata": {"tags": ["gpuflow-guard"]}, "outputs": [noisy]},
             {"cell_type": "code", "metadata": {}, "outputs": [noisy]}]
    found = findings.scan_cells(cells)
    assert found.warnings == 10 and len(found.warning_examples) == findings.EXAMPLES
    assert {e.cell for e in found.warning_examples} == {0}


# -- history -----------------------------------------------------------------------
def test_history_round_trip_and_packed_runs_keep_the_alone_device_peak(tmp_path: Path) -> None:
    file = tmp_path / "h.json"
    alone = history.Measurement(device_peak_bytes=6 * GIB, rmm_peak_bytes=4 * GIB, duration_s=10.0)
    history.record("a.ipynb", "d1", alone, file)
    packed = history.Measurement(device_peak_bytes=40 * GIB, rmm_peak_bytes=5 * GIB, duration_s=12.0, packed=True)
    stored = history.record("a.ipynb", "d1", packed, file)
    assert (stored.device_peak_bytes, stored.rmm_peak_bytes, stored.duration_s) == (6 * GIB, 5 * GIB, 12.0)
    assert history.lookup("a.ipynb", "d1", file) == stored
    assert history.lookup("a.ipynb", "other digest", file) is None
    for n in range(history.KEEP_PER_NOTEBOOK + 2):
        history.record("a.ipynb", f"v{n}", alone, file)
    assert len(json.loads(file.read_text())["notebooks"]["a.ipynb"]) == history.KEEP_PER_NOTEBOOK
    file.write_text("{broken")
    assert history.lookup("a.ipynb", "d1", file) is None  # unreadable: no history, never a crash


def test_history_from_telemetry(tmp_path: Path) -> None:
    tel = tmp_path / "telemetry.json"
    tel.write_text(json.dumps({"peak_memory_bytes": 3 * GIB, "memory_total": 80 * GIB,
                               "cells": [{"cell": 1, "peak_bytes": GIB}, {"cell": 2, "peak_bytes": 2 * GIB}]}))
    m = history.from_telemetry(tel, 7.5, packed=False)
    # the cells' peaks summed: what cell 1 kept is not in cell 2's peak
    assert (m.device_peak_bytes, m.rmm_peak_bytes, m.duration_s, m.memory_total_bytes) == (3 * GIB, 3 * GIB, 7.5, 80 * GIB)
    assert history.from_telemetry(tmp_path / "none.json", 1.0, packed=False).device_peak_bytes is None


def _writer(file: str, worker: int) -> None:
    for n in range(15):
        history.record(f"nb{worker}.ipynb", f"d{n % 3}", history.Measurement(duration_s=float(n)), Path(file))


def test_concurrent_runs_never_corrupt_or_lose_entries(tmp_path: Path) -> None:
    file = tmp_path / "cache" / "h.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(file), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    data = json.loads(file.read_text())
    assert sorted(data["notebooks"]) == [f"nb{w}.ipynb" for w in range(4)]
    assert all(len(v) == 3 for v in data["notebooks"].values())


# -- packing: a pure function of history and devices ------------------------------
def items(n: int, rmm_gib: float | None, duration: float | None = 30.0) -> list[pack.Item]:
    return [pack.Item(name=f"nb{i}", rmm_peak_bytes=int(rmm_gib * GIB) if rmm_gib is not None else None,
                      duration_s=duration) for i in range(n)]


def test_eight_small_notebooks_share_one_gpu_with_headroom() -> None:
    h100 = [pack.Device(gpu="0", memory_bytes=80 * GIB)]
    groups = pack.plan(items(8, 3.0), h100)
    assert len(groups) == 1 and len(groups[0].notebooks) == 8
    need = groups[0].notebooks[0].need_bytes
    assert need == pack.need(items(1, 3.0)[0]) == int(3 * GIB * (1 + pack.HEADROOM)) + pack.CONTEXT_BYTES
    assert sum(p.need_bytes or 0 for p in groups[0].notebooks) <= h100[0].capacity
    assert groups[0].notebooks[0].pool_cap_bytes == need - pack.CONTEXT_BYTES
    assert pack.plan(items(8, 3.0), h100) == groups  # deterministic


def test_unmeasured_and_too_big_notebooks_get_a_whole_gpu() -> None:
    dev = [pack.Device(gpu="0", memory_bytes=40 * GIB)]
    assert [p.need_bytes for p in pack.plan(items(1, None, None), dev)[0].notebooks] == [None]
    assert [p.need_bytes for p in pack.plan(items(1, 50.0), dev)[0].notebooks] == [None]
    # the device peak of a notebook that ran alone bounds its pool too (context included: never too small)
    alone = pack.Item(name="x", device_peak_bytes=int(1.5 * GIB))
    assert pack.Placement(name="x", need_bytes=pack.need(alone), duration_s=None).pool_cap_bytes == \
        int(1.5 * GIB * (1 + pack.HEADROOM))
    # two upper bounds of one pool: the smaller one counts (an RMM pool inflates the device's)
    both = pack.Item(name="x", device_peak_bytes=40 * GIB, rmm_peak_bytes=2 * GIB)
    assert pack.need(both) == int(2 * GIB * (1 + pack.HEADROOM)) + pack.CONTEXT_BYTES


def test_two_gpus_split_the_work_and_unmeasured_ones_spread() -> None:
    devs = [pack.Device(gpu="0", memory_bytes=80 * GIB), pack.Device(gpu="1", memory_bytes=80 * GIB)]
    groups = pack.plan(items(8, 3.0), devs)
    assert sorted(len(g.notebooks) for g in groups) == [4, 4]
    alone = pack.plan(items(2, None, None), devs)
    assert [len(g.notebooks) for g in alone] == [1, 1]
    assert pack.plan(items(3, 3.0), []) == []


def test_out_of_memory_errors_are_recognised() -> None:
    assert pack.out_of_memory("gpuflow.execute: cell 3 raised OutOfMemoryError: Out of memory allocating 1,024 bytes")
    assert pack.out_of_memory("MemoryError: std::bad_alloc: out_of_memory: RMM failure")
    assert not pack.out_of_memory("ValueError: boom") and not pack.out_of_memory(None)


def test_plan_devices_spec() -> None:
    assert pack.parse_devices("2x80GiB") == [pack.Device(gpu="0", memory_bytes=80 * GIB),
                                             pack.Device(gpu="1", memory_bytes=80 * GIB)]
    assert [d.gpu for d in pack.parse_devices("80GiB,40GiB")] == ["0", "1"]
    with pytest.raises(ValueError):
        pack.parse_devices("2xlots")


# -- the pool's claims ---------------------------------------------------------------
def test_a_two_gpu_notebook_holds_two_slots_pinned_together() -> None:
    seen: dict[str, str] = {}

    def work(item: str, slot: Slot) -> str:
        seen[item] = slot.env().get("CUDA_VISIBLE_DEVICES", "")
        time.sleep(0.05)
        return item

    pool: Pool[str, str] = Pool(slots=slots_for("0,1", 1, []), work=work, failed=lambda r: False,
                                claim=lambda item: Claim(width=2 if item == "wide" else 1))
    pool.start(["a", "wide", "b"])
    assert pool.wait(10)
    assert seen["wide"] == "0,1" and sorted(pool.results) == [0, 1, 2]
    with pytest.raises(errors.ConfigError):
        Pool(slots=slots_for("0", 1, []), work=work, failed=lambda r: False,
             claim=lambda item: Claim(width=2)).start(["wide"])


def test_memory_claims_share_a_gpu_up_to_its_capacity_and_a_retry_runs_alone() -> None:
    running: list[int] = []
    peak = [0]
    lock = threading.Lock()

    def work(item: tuple[str, int], slot: Slot) -> str:
        with lock:
            running.append(1)
            peak[0] = max(peak[0], len(running))
        time.sleep(0.1)
        with lock:
            running.pop()
        return item[0]

    def claim(item: tuple[str, int]) -> Claim:
        return Claim(memory=item[1], slot="gpu0") if item[1] else Claim()

    retried: list[str] = []

    def again(item: tuple[str, int], result: str) -> tuple[str, int] | None:
        if item[0] == "oom" and item[1]:
            retried.append(result)
            return ("oom", 0)  # alone, on a whole slot
        return None

    pool: Pool[tuple[str, int], str] = Pool(
        slots=slots_for("0", 1, []), work=work, failed=lambda r: False, claim=claim,
        capacity={"gpu0": 10 * GIB}, again=again)
    pool.start([(f"n{i}", 3 * GIB) for i in range(5)] + [("oom", 2 * GIB)])
    assert pool.wait(10)
    assert peak[0] == 3  # three 3 GiB claims fit in 10 GiB, a fourth waits
    assert retried == ["oom"] and len(pool.results) == 6
    assert 0 < pool.busy_s["gpu0"] < 2
