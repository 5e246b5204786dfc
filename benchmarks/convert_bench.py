"""gpuflow.convert vs `jupyter nbconvert --to html`, on a real notebook.

Both run as fresh processes (what a CI step pays), alternating A/B so that
disk cache and CPU frequency drift hit both alike. Prints medians of wall
time and of CPU time (user+sys of the child: steadier on a busy machine) and
the ratios gpuflow/CLI (lower is better).

    python benchmarks/convert_bench.py [NOTEBOOK.ipynb ...] [--runs N]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus" / "single-cell-analysis-blueprint"
DEFAULT = [CORPUS / "01_scRNA_analysis_preprocessing.ipynb", CORPUS / "06_scRNA_analysis_90k_brain_example.ipynb"]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, cpu) seconds of one run."""
    c0, t0 = _cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, _cpu() - c0


def _medians(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def bench(notebook: Path, runs: int) -> tuple[tuple[float, float], tuple[float, float]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    jupyter = str(Path(sys.executable).with_name("jupyter"))
    with tempfile.TemporaryDirectory() as tmp:
        nb = Path(tmp) / notebook.name
        shutil.copyfile(notebook, nb)
        cli = [jupyter, "nbconvert", "--to", "html", str(nb), "--output", str(Path(tmp) / "cli.html")]
        ours = [sys.executable, "-m", "gpuflow.convert", str(nb), str(Path(tmp) / "gpuflow.html")]
        _timed(cli, env), _timed(ours, env)  # warm the page cache and .pyc files
        a, b = [], []
        for _ in range(runs):
            a.append(_timed(cli, env))
            b.append(_timed(ours, env))
    return _medians(a), _medians(b)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="*", type=Path, default=DEFAULT)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    missing = [n for n in args.notebooks if not n.is_file()]
    if missing:
        print(f"skipped: not found: {', '.join(map(str, missing))}", file=sys.stderr)
    for notebook in (n for n in args.notebooks if n.is_file()):
        (cli_wall, cli_cpu), (our_wall, our_cpu) = bench(notebook, args.runs)
        size = notebook.stat().st_size / 1e6
        print(f"{notebook.name} ({size:.1f} MB, {args.runs} runs, medians)\n"
              f"  wall: jupyter nbconvert {cli_wall:.2f}s  gpuflow.convert {our_wall:.2f}s  "
              f"ratio {our_wall / cli_wall:.2f}\n"
              f"  cpu:  jupyter nbconvert {cli_cpu:.2f}s  gpuflow.convert {our_cpu:.2f}s  "
              f"ratio {our_cpu / cli_cpu:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
