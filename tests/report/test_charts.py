"""The report's GPU chart and run timeline, from a run recorded on an H100
(tests/report/fixtures/gpu_run: `gpuflow run --repo benchmarks/gpu_notebooks
--notebooks gpu_cupy_matmul.ipynb gpu_cupy_fft_sort.ipynb --test-repo ''
--gpu require` on nvidia-h100-x1; notebook outputs and logs left out), as
SVG strings and as pages rendered by headless Chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gpuflow import summary
from gpuflow.report import charts
from gpuflow.report.model import Schedule, SlotUse
from tests.report.test_summary import _chromium, _console, _load

FIXTURE = Path(__file__).parent / "fixtures" / "gpu_run"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(FIXTURE, copy)
    return copy


def _schedule(run_dir: Path) -> Schedule:
    data = json.loads((run_dir / "run.json").read_text())
    head = {k: v for k, v in data.items() if k != "notebooks"}
    return Schedule(**{**head, "slots": {k: SlotUse(**v) for k, v in head["slots"].items()}})


def test_gpu_chart_shows_both_memories_utilisation_and_cell_boundaries() -> None:
    gpu = summary.gpu_facts(FIXTURE / "gpu_cupy_matmul" / "telemetry.json")
    assert gpu is not None
    svg = charts.gpu_chart(gpu)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count('class="memory-used"') == 1 and svg.count('class="utilisation"') == 1
    # one boundary per executed cell, labelled as papermill numbers them
    assert svg.count('class="cell-boundary"') == len(gpu.cell_spans) == 5
    assert [f"<title>In [{n}] " in svg for n in range(1, 6)] == [True] * 5
    # the cell that held 2 GiB is drawn at 2 GiB, under a pool whose reservation NVML counts
    assert "In [4]: RMM peak 2.00 GiB" in svg
    assert gpu.device_memory_used_peak_bytes is not None and gpu.device_memory_used_peak_bytes > 40 << 30
    for label in ("memory (GiB)", "utilisation (%)", "time since the kernel started (s)",
                  "memory in use (NVML, includes an RMM pool)", "allocated by the notebook (RMM peak per cell)"):
        assert label in svg
    assert "<script" not in svg and not re.search(r"(href|src)=", svg)


def test_gpu_chart_needs_two_samples() -> None:
    gpu = summary.gpu_facts(FIXTURE / "gpu_cupy_matmul" / "telemetry.json")
    assert gpu is not None
    assert charts.gpu_chart(gpu.__class__(**{**gpu.__dict__, "memory_series": gpu.memory_series[:1]})) == ""


def test_timeline_has_a_row_per_slot_and_a_bar_per_notebook_step(run_dir: Path) -> None:
    result = summary.write_run_summary(run_dir, title="recorded GPU run", schedule=_schedule(run_dir))
    svg = charts.timeline(result)
    assert svg.count('class="slot-label"') == 1 and ">gpu0</text>" in svg
    for name in ("gpu_cupy_matmul", "gpu_cupy_fft_sort"):
        assert f'class="step execute" data-notebook="{name}"' in svg
        assert f'class="step convert" data-notebook="{name}"' in svg
    assert "makespan 8.0 s" in svg and "time since the first notebook started (s)" in svg


def test_ticks_are_round_and_cover_the_range() -> None:
    assert charts._ticks(8.0) == [0, 2, 4, 6, 8]
    assert charts._ticks(41.3, 4)[-1] >= 41.3 and charts._ticks(0.004)[-1] >= 0.004


def _screenshot(exe: str, page: Path, png: Path, profile: Path) -> None:
    subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--window-size=1000,1400", f"--screenshot={png}", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)


def _not_blank(png: Path) -> None:
    from PIL import Image

    with Image.open(png) as image:
        assert image.width >= 300 and image.height >= 300
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 20, "the screenshot is (nearly) one colour"


@pytest.mark.chromium
def test_run_and_notebook_pages_of_a_gpu_run_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    exe = _chromium()
    summary.write_run_summary(run_dir, title="recorded GPU run", schedule=_schedule(run_dir))
    pages = {"run": run_dir / "index.html", "notebook": run_dir / "gpu_cupy_matmul" / "index.html"}
    expect = {"run": ['class="run-timeline"', "makespan 8.0 s", ">gpu0<"],
              "notebook": ['class="gpu-chart"', 'class="memory-used"', 'class="rmm-allocated"',
                           "GPU memory allocated by the notebook, peak (RMM)", "memory (GiB)"]}
    for kind, page in pages.items():
        dom, stderr = _load(exe, page, tmp_path / f"profile-{kind}")
        assert "<svg" in dom, stderr[-2000:]
        for text in expect[kind]:
            assert text in dom, (kind, text)
        assert "<script" not in page.read_text()
        assert not _console(stderr), _console(stderr)
        png = tmp_path / f"{kind}.png"
        _screenshot(exe, page, png, tmp_path / f"shot-{kind}")
        assert png.is_file(), f"chromium wrote no screenshot of the {kind} page"
        _not_blank(png)
