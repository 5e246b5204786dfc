"""Row 7: how execute overhead and convert time grow with cell count and
output size, and what papermill's save-after-every-cell costs."""
from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import notebooks
from benchmarks.harness import Config, Line, measure
from benchmarks.rows_steps import convert_pair, execute_pair

FLAT = "b(large) <= 2 b(small) + 1 ms"


def row7_scaling(cfg: Config) -> list[Line]:
    cells = (10, 30) if cfg.quick else (10, 100, 1000)
    sizes = (1,) if cfg.quick else (1, 10, 50)
    runs = 1 if cfg.quick else 3
    lines: list[Line] = []
    if cfg.quick:
        lines.append(Line(row="7", case="scaling", note="quick: 10/30 cells and 1 MB only; full run: 10/100/1000 "
                          "cells, 1/10/50 MB"))
    nb_dir = cfg.out / "notebooks"
    by_cells = [(n, notebooks.trivial(nb_dir / f"trivial-{n}.ipynb", n)) for n in cells]
    by_size = [(mb, notebooks.with_outputs(nb_dir / f"outputs-{mb}mb.ipynb", mb)) for mb in sizes]
    for label, unit, series in (("cells", "cell", by_cells), ("MB out", "MB", by_size)):
        exec_lines, conv_lines = [], []
        for i, (n, nb) in enumerate(series):
            tag = f"row7-{n}{unit.lower()}"
            gpuflow, papermill = execute_pair(cfg, nb, tag)
            case = f"execute {n} {label}"
            # papermill at 1,000 cells or 50 MB takes minutes (it rewrites the
            # whole notebook twice per cell): one run each keeps `make bench` bounded
            n_runs = 1 if n >= 1000 or (unit == "MB" and n >= 50) else runs
            exec_lines.append(measure("7", case, "gpuflow.execute", gpuflow, papermill, cfg=cfg, runs=n_runs,
                                      warmup=1 if i == 0 and not cfg.quick else 0))
            executed = _keep_executed(cfg, tag, nb_dir / f"executed-{nb.stem}.ipynb")
            lines.append(_save_cost(executed, exec_lines[-1].baseline, n if unit == "cell" else 20,
                                    growing=unit == "MB"))
            if executed is None:
                continue
            g_conv, j_conv = convert_pair(cfg, executed, f"{tag}-convert")
            case = f"convert {n} {label}"
            conv_lines.append(measure("7", case, "gpuflow.convert", g_conv, j_conv, cfg=cfg, runs=n_runs,
                                      warmup=0))
        xs = [n for n, _ in series]
        lines += exec_lines + conv_lines
        lines.append(_slope(f"execute slope per {unit}", xs, exec_lines, unit))
        lines.append(_slope(f"convert slope per {unit}", xs, conv_lines, unit))
    return lines


def _keep_executed(cfg: Config, tag: str, dest: Path) -> Path | None:
    """The notebook papermill executed: the convert rows and the save-cost
    estimate need a notebook with its outputs."""
    src = cfg.scratch / tag / "papermill" / "out.ipynb"
    if src.exists():
        shutil.copyfile(src, dest)
    return dest if dest.exists() else None


def _save_cost(executed: Path | None, papermill_s: float | None, cells: int, *, growing: bool) -> Line:
    """papermill rewrites the whole notebook (deepcopy, validate, JSON) when
    each cell starts and again when it ends: estimate that as 2 x cells x
    one nbformat.write of the finished notebook, or about (cells + 1) x one
    write when every cell adds the same output (the notebook grows linearly)."""
    line = Line(row="7", case=f"papermill saves ({cells} cells)" if executed is None else
                f"papermill saves, {executed.stat().st_size / 1e6:.1f} MB nb x {cells} cells", unit="s")
    if executed is None:
        line.note = "n/a: no executed notebook"
        return line
    import nbformat
    nb = nbformat.read(str(executed), as_version=4)
    scratch = executed.with_suffix(".savetest")
    t0 = time.perf_counter()
    nbformat.write(nb, str(scratch))
    one = time.perf_counter() - t0
    scratch.unlink()
    saves = cells + 1 if growing else 2 * cells
    line.baseline, line.runs = one * saves, 1
    share = f"; {100 * line.baseline / papermill_s:.0f}% of papermill's median" if papermill_s else ""
    line.note = (f"estimate: one save of the final notebook {one * 1000:.1f} ms x "
                 f"{'(cells + 1), growing' if growing else '2 x cells'}{share}")
    return line


def _slope(case: str, xs: Sequence[int], lines: Sequence[Line], unit: str) -> Line:
    """Fit time = a + b*n per side; b between the two smallest sizes vs the
    two largest shows whether the per-unit cost grows (quadratic) or not."""
    line = Line(row="7", case=case, unit=f"ms/{unit}", target=FLAT)
    if len(xs) < 2 or len(lines) < len(xs):
        line.note = "n/a: not enough points"
        return line
    notes, flat = [], []
    for side in ("gpuflow", "baseline"):
        ys = [getattr(ln, side) for ln in lines]
        if any(y is None for y in ys):
            continue
        small = (ys[1] - ys[0]) / (xs[1] - xs[0]) * 1000
        large = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) * 1000
        setattr(line, side, large)
        a, b = _fit(xs, ys)
        notes.append(f"{side}: b small {small:.2f}, b large {large:.2f} ms/{unit}; fit a={a:.2f} s, b={b * 1000:.2f}")
        if side == "gpuflow":
            flat.append(large <= 2 * max(small, 0) + 1)
    line.runs = min((ln.runs for ln in lines), default=0)
    line.met = flat[0] if flat else None
    line.note = "; ".join(notes) or "n/a: no measurements"
    return line


def _fit(xs: Sequence[int], ys: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=False)) / sxx if sxx else 0.0
    return my - b * mx, b
