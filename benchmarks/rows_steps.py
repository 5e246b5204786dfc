"""Rows 1-4: CLI start, execute overhead, HTML conversion, the whole flow."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks import notebooks
from benchmarks.harness import (
    ROOT,
    VENV_BIN,
    Config,
    Line,
    Side,
    child_env,
    compare,
    gpuflow_cmd,
    measure,
    missing_line,
    module_missing,
)

CORPUS = ROOT.parent / "shared" / "corpus" / "single-cell-analysis-blueprint"
HEAVY = ("papermill", "nbconvert", "nbclient", "cupy", "rmm", "git", "jupyter_client")
# the existing workflow's papermill flags (GitHub Actions and the production Task)
PAPERMILL_FLAGS = ("--log-output", "--log-level", "DEBUG", "--progress-bar", "--report-mode",
                   "--kernel", "python3")


def _runs(cfg: Config, full: int) -> tuple[int, int]:
    """(runs, warm-up) for a row: a smoke run measures once, cold."""
    return (1, 0) if cfg.quick else (full, 1)


def row1_cli_start(cfg: Config) -> list[Line]:
    runs, warmup = (3, 1) if cfg.quick else (15, 2)
    lines = []
    papermill_help = Side(name="papermill --help", cmd=[str(VENV_BIN / "papermill"), "--help"])
    lines.append(measure("1", "execute --help", "gpuflow.execute",
                         Side(name="execute --help", cmd=gpuflow_cmd("execute", "--help")), papermill_help,
                         cfg=cfg, runs=runs, warmup=warmup))
    if module_missing("gpuflow.clone"):
        lines.append(missing_line("1", "clone --help (alone)", "gpuflow.clone", "< 150 ms"))
    else:
        lines.append(compare("1", "clone --help (alone)", Side(name="clone --help",
                     cmd=gpuflow_cmd("clone", "--help")), None, cfg=cfg, runs=runs, warmup=warmup,
                     target="< 150 ms", limit=0.150))
    lines.append(heavy_imports())
    return lines


def heavy_imports() -> Line:
    """`python -X importtime -m gpuflow.<step> --help` for every step that
    exists: none may import papermill, nbconvert, git, cupy, ..."""
    steps = [s for s in ("run", "clone", "download", "execute", "convert", "stage", "test", "summary",
                         "doctor") if not module_missing(f"gpuflow.{s}")]
    found: dict[str, list[str]] = {}
    for step in ["__main__", *steps]:
        argv = [sys.executable, "-X", "importtime", "-m", f"gpuflow.{step}" if step != "__main__" else "gpuflow",
                "--help"]
        out = subprocess.run(argv, capture_output=True, text=True, env=child_env(), cwd=ROOT)
        mods = {m.group(1).split(".")[0] for m in re.finditer(r"\|\s+(\S+)\s*$", out.stderr, re.M)}
        heavy = sorted(mods & set(HEAVY))
        if heavy:
            found[step] = heavy
    note = ("none in: " + ", ".join(["gpuflow", *steps])) if not found else \
        "; ".join(f"{k}: {', '.join(v)}" for k, v in found.items())
    return Line(row="1", case="heavy imports on --help", target="none", met=not found,
                note=f"heavy imports: {note}", commands={"gpuflow": "python -X importtime -m gpuflow.<step> --help"})


def _fresh(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def execute_pair(cfg: Config, nb: Path, tag: str) -> tuple[Side, Side]:
    """gpuflow.execute (guard on, default flags) vs the papermill CLI with the
    workflow's flags, each writing into its own fresh directory."""
    base = cfg.scratch / tag
    g_dir, p_dir = base / "gpuflow", base / "papermill"
    gpuflow = Side(name=f"{tag} gpuflow.execute", prepare=lambda: _fresh(g_dir), cwd=nb.parent,
                   cmd=gpuflow_cmd("execute", nb, g_dir / "out.ipynb", "--kernel", "python3"))
    papermill = Side(name=f"{tag} papermill", prepare=lambda: _fresh(p_dir), cwd=nb.parent,
                     cmd=[str(VENV_BIN / "papermill"), str(nb), str(p_dir / "out.ipynb"), *PAPERMILL_FLAGS])
    return gpuflow, papermill


def convert_pair(cfg: Config, nb: Path, tag: str) -> tuple[Side, Side]:
    base = cfg.scratch / tag
    g_dir, j_dir = base / "gpuflow", base / "nbconvert"
    gpuflow = Side(name=f"{tag} gpuflow.convert", prepare=lambda: _fresh(g_dir),
                   cmd=gpuflow_cmd("convert", nb, g_dir / f"{nb.stem}.html"))
    nbconvert = Side(name=f"{tag} nbconvert", prepare=lambda: _fresh(j_dir),
                     cmd=[str(VENV_BIN / "jupyter"), "nbconvert", "--to", "html", str(nb),
                          "--output", nb.stem, "--output-dir", str(j_dir)])
    return gpuflow, nbconvert


def row2_execute(cfg: Config) -> list[Line]:
    nb = notebooks.trivial(cfg.out / "notebooks" / "trivial-20.ipynb", 20)
    gpuflow, papermill = execute_pair(cfg, nb, "row2")
    runs, warmup = _runs(cfg, 10)
    return [measure("2", "20 trivial cells", "gpuflow.execute", gpuflow, papermill, cfg=cfg, runs=runs,
                    warmup=warmup, target="<= 1.05", limit=1.05)]


def row3_html(cfg: Config) -> list[Line]:
    names = ["01_scRNA_analysis_preprocessing", "06_scRNA_analysis_90k_brain_example"]
    lines = []
    for name in names[:1] if cfg.quick else names:
        nb = CORPUS / f"{name}.ipynb"
        case = f"notebook {name[:2]} ({nb.stat().st_size / 1e6:.1f} MB)" if nb.exists() else f"notebook {name[:2]}"
        if not nb.exists():
            lines.append(Line(row="3", case=case, target="<= 0.7", note=f"skipped: {nb} absent (no ../shared corpus)"))
            continue
        gpuflow, nbconvert = convert_pair(cfg, nb, f"row3-{name[:2]}")
        runs, warmup = _runs(cfg, 5)
        lines.append(measure("3", case, "gpuflow.convert", gpuflow, nbconvert, cfg=cfg, runs=runs,
                             warmup=warmup, target="<= 0.7", limit=0.7))
    if cfg.quick:
        lines.append(Line(row="3", case="notebook 06", target="<= 0.7", note="quick: skipped (full run only)"))
    return lines
