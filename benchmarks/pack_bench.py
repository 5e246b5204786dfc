"""`python -m benchmarks.pack_bench --out DIR`: `gpuflow run --pack` against
the serial run of the same 8 short CuPy notebooks (benchmarks/pack_notebooks),
on one GPU and, when two are visible, on two; then a notebook whose history
says it needs far less than it uses, to show the out-of-memory retry.

Writes DIR/pack_bench.json (and each run's dir and log under DIR). It never
raises: a missing GPU, CuPy or a failed run is written down, and the exit
code says whether every target was met (0), a target was missed (1) or the
benchmark could not run (2).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NOTEBOOKS = HERE / "pack_notebooks"
SUITE = tuple(f"pack_{i}.ipynb" for i in range(8))
GROWS = "grows.ipynb"  # uses 4 GiB; the history planted for it says 256 MiB
TARGETS = {"pack_1gpu": 0.4, "pack_2gpu": 0.25}
GIB = 1 << 30


# what each notebook holds at its peak: x and y, each size_gib (plus its CUDA context)
SIZES_GIB = tuple(round(0.5 + 0.2 * i, 2) for i in range(8))
GROWS_GIB = 4.0
CELLS = (
    "import time\n\nimport cupy as cp\nimport numpy as np\n\nt0 = time.perf_counter()\n"
    "x = cp.random.random(int(size_gib * 2**30) // 8, dtype=cp.float64)",
    "# GPU work between host steps, as a CI notebook loads, transforms and plots\n"
    "total = 0.0\nfor r in range(rounds):\n    y = cp.sqrt(x)\n    y *= 2.0\n    y += r\n"
    "    total += float(y[:4096].sum())\n    del y\n"
    "    host = np.sort(np.random.default_rng(r).random(200_000))\n    time.sleep(pause_s)",
    "a = cp.random.random((2048, 2048), dtype=cp.float32)\nfor _ in range(10):\n"
    "    a = cp.tanh(a @ a / 2048)\ncp.cuda.Stream.null.synchronize()\n"
    "print('RESULT=', round(total, 3), float(a[0, 0]))\nprint(f'elapsed {time.perf_counter() - t0:.1f}s')",
)


def notebook_json(size_gib: float, rounds: int = 12, pause_s: float = 0.4) -> str:
    """A short CuPy notebook whose peak is 2 * size_gib GiB on the device, plus its context."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = f"size_gib = {size_gib}\nrounds = {rounds}\npause_s = {pause_s}"
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                *(nbformat.v4.new_code_cell(src) for src in CELLS)]
    for n, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{n}"  # stable ids: the committed files equal what this writes
    return nbformat.writes(nb)


def write_notebooks(dest: Path) -> None:
    """benchmarks/pack_notebooks: `python -m benchmarks.pack_bench --write-notebooks`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, size in zip(SUITE, SIZES_GIB, strict=True):
        (dest / name).write_text(notebook_json(size))
    (dest / GROWS).write_text(notebook_json(GROWS_GIB / 2))


def sh(cmd: Sequence[str], log: Path, env: dict[str, str], timeout: float = 900) -> tuple[int, float]:
    """Run `cmd`, its output to `log`; (exit code, wall seconds). Never raises."""
    t0 = time.perf_counter()
    try:
        with open(log, "w") as fh:
            rc = subprocess.run(list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                                check=False).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        with open(log, "a") as fh:
            fh.write(f"\n[pack_bench] {type(exc).__name__}: {exc}\n")
        rc = 124
    return rc, round(time.perf_counter() - t0, 3)


def visible_gpus(env: dict[str, str]) -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=60, env=env, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def cupy_works(env: dict[str, str]) -> str | None:
    """None when CuPy can allocate on the GPU, else why not."""
    probe = "import cupy; cupy.ones(16).sum().item(); print('ok')"
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                             env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"CuPy probe failed: {exc}"
    return None if out.stdout.strip().endswith("ok") else f"CuPy unusable: {(out.stderr or out.stdout)[-400:]}"


def only_run(out: Path) -> Path | None:
    runs = sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) if out.is_dir() else []
    return runs[-1] if runs else None


def read_run(out: Path) -> dict[str, Any]:
    """What one `gpuflow run` left: makespan, exit code, each notebook's status, the packing."""
    from gpuflow.core.artifacts import RunDir

    run_dir = only_run(out)
    if run_dir is None:
        return {"error": f"no run dir under {out}"}
    facts: dict[str, Any] = {"run_dir": str(run_dir)}
    try:
        run = json.loads(RunDir(run_dir).run_json.read_text())
        facts.update(makespan_s=run.get("makespan_s"), exit_code=run.get("exit_code"),
                     notebooks={n["name"]: {"exit_code": n["exit_code"], "slot": n["slot"], "retried": n.get("retried"),
                                            "duration_s": n["duration_s"], "error": n.get("error")}
                                for n in run.get("notebooks", [])})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        facts["error"] = f"run.json unreadable: {exc}"
    try:
        summary = json.loads(RunDir(run_dir).summary_json.read_text())
        facts["packed"] = (summary.get("run") or {}).get("packed") or {}
        facts["peaks_gib"] = {name: round(s["gpu"]["peak_memory_mib"] / 1024, 2)
                              for name, s in (summary.get("notebooks") or {}).items()
                              if (s.get("gpu") or {}).get("peak_memory_mib")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        facts["summary_error"] = str(exc)
    return facts


def ratio(arm: dict[str, Any], serial: dict[str, Any], target: float) -> dict[str, Any]:
    """The arm's makespan over the serial one, and whether it met `target` with no failure."""
    a, s = arm.get("makespan_s"), serial.get("makespan_s")
    failures = sorted(n for n, v in (arm.get("notebooks") or {}).items() if v.get("exit_code"))
    value = round(a / s, 3) if isinstance(a, (int, float)) and isinstance(s, (int, float)) and s > 0 else None
    met = value is not None and value <= target and arm.get("exit_code") == 0 and not failures
    return {"ratio": value, "target": target, "met": met, "failures": failures}


def plant_history(repo: Path, env: dict[str, str]) -> str | None:
    """Say in the history that grows.ipynb needs 256 MiB (it uses 4 GiB)."""
    code = ("import sys; from pathlib import Path; from gpuflow.flow import config, history\n"
            "repo = Path(sys.argv[1]); cfg = config.resolve(env={}, cli={'repo': str(repo)}).config\n"
            "history.record(*history.key_for(cfg, repo / 'grows.ipynb', 'grows.ipynb'),\n"
            "               history.Measurement(device_peak_bytes=512 << 20, rmm_peak_bytes=256 << 20, duration_s=8.0))\n")
    out = subprocess.run([sys.executable, "-c", code, str(repo)], capture_output=True, text=True, env=env, check=False)
    return None if out.returncode == 0 else out.stderr[-400:]


def gpuflow_run(out: Path, repo: Path, notebooks: Sequence[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "gpuflow.run", "--repo", str(repo), "--notebooks", *notebooks,
            "--test-repo", "", "--gpu", "require", "--out", str(out), *extra]


def bench(out: Path) -> tuple[int, dict[str, Any]]:
    env = dict(os.environ)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    repo, logs = work / "repo", out / "logs"
    for d in (repo, logs):
        d.mkdir(parents=True, exist_ok=True)
    for name in (*SUITE, GROWS):
        shutil.copy2(NOTEBOOKS / name, repo / name)
    env["GPUFLOW_CACHE_DIR"] = str(work / "cache")  # a fresh history: the serial run measures it
    import gpuflow

    result: dict[str, Any] = {"gpuflow": str(Path(gpuflow.__file__).parent), "python": sys.version.split()[0],
                              "notebooks": list(SUITE)}
    gpus = visible_gpus(env)
    result["gpus"] = gpus
    try:
        result["device"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60,
                                          check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        result["device"] = None
    why = "no GPU visible to nvidia-smi" if not gpus else cupy_works(env)
    if why:
        result["error"] = why
        return 2, result

    def arm(name: str, cmd: list[str]) -> dict[str, Any]:
        rc, wall = sh(cmd, logs / f"{name}.log", env)
        facts = {"command": " ".join(cmd), "exit": rc, "wall_s": wall, **read_run(work / name)}
        print(f"[pack_bench] {name}: exit {rc}, makespan {facts.get('makespan_s')}s, wall {wall}s", flush=True)
        return facts

    # one untimed notebook first: CuPy's first import and kernel cache on this machine
    result["warmup"] = arm("warmup", gpuflow_run(work / "warmup", repo, [SUITE[0]], "--gpus", gpus[0]))
    result["serial"] = arm("serial", gpuflow_run(work / "serial", repo, SUITE, "--gpus", gpus[0]))
    result["pack_1gpu"] = arm("pack_1gpu", gpuflow_run(work / "pack_1gpu", repo, SUITE, "--pack", "--gpus", gpus[0]))
    result["pack_1gpu"].update(ratio(result["pack_1gpu"], result["serial"], TARGETS["pack_1gpu"]))
    if len(gpus) >= 2:
        two = ",".join(gpus[:2])
        result["pack_2gpu"] = arm("pack_2gpu", gpuflow_run(work / "pack_2gpu", repo, SUITE, "--pack", "--gpus", two))
        result["pack_2gpu"].update(ratio(result["pack_2gpu"], result["serial"], TARGETS["pack_2gpu"]))
    planted = plant_history(repo, env)
    oom = arm("oom_retry", gpuflow_run(work / "oom_retry", repo, [GROWS, SUITE[1], SUITE[2]], "--pack",
                                       "--gpus", gpus[0])) if planted is None else {"error": planted}
    retried = ((oom.get("notebooks") or {}).get("grows") or {}).get("retried")
    oom["met"] = bool(retried) and oom.get("exit_code") == 0
    result["oom_retry"] = oom
    history = work / "cache" / "notebook-history.json"
    result["history"] = json.loads(history.read_text()) if history.is_file() else None
    met = all(result[k].get("met") for k in ("pack_1gpu", "pack_2gpu", "oom_retry") if k in result)
    return (0 if met else 1), result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pack_bench", description=__doc__)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench-out/pack"))
    p.add_argument("--write-notebooks", action="store_true", help="rewrite benchmarks/pack_notebooks, then exit")
    args = p.parse_args(argv)
    if args.write_notebooks:
        write_notebooks(NOTEBOOKS)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        code, result = bench(args.out.resolve())
    except Exception as exc:  # the benchmark's own bug: written down, not lost
        import traceback

        code, result = 2, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result["exit"] = code
    (args.out / "pack_bench.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result.get(k) for k in ("error", "gpus", "exit")}
                     | {k: {f: result[k].get(f) for f in ("makespan_s", "ratio", "met", "failures")}
                        for k in ("serial", "pack_1gpu", "pack_2gpu", "oom_retry") if k in result}, indent=1))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
