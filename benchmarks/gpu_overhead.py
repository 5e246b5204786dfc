"""What gpuflow's GPU path costs on top of papermill, on a GPU machine.

- preflight: `gpuflow.gpu.devices.preflight("require")` in this process,
  median of 5, with the driver's answer cached (one nvidia-smi call); with a
  fresh cache each time, as on a new pod, both what execute waits for before
  it starts its kernel (`Preflight.start`: nvidia-smi, the libcuda child
  started) and the whole check (`preflight`: the child waited for); and
  `nvidia-smi -L` alone for scale;
- execute: `python -m gpuflow.execute NB OUT` (defaults: --gpu auto, --rmm
  auto = a pool, telemetry on), the same with a fresh cache directory each
  run (the driver probe runs every time, beside the kernel's start), and
  `--rmm off`, against `papermill NB OUT` on the short CuPy notebooks in
  benchmarks/gpu_notebooks/, median of 5 alternating runs each; the guard's
  own cost (imports, CUDA context, pool) is the `setup_s` it records in the
  output notebook's metadata;
- parts: where the start-up time goes, each in a fresh process, median of 5:
  the driver probe's child step by step (interpreter, dlopen, cuInit), and
  the guard's setup against what a notebook's first CuPy use costs anyway.

    python -m benchmarks.gpu_overhead --out "$OUT" [--repeats 5]

Writes OUT/gpu-overhead.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "benchmarks" / "gpu_notebooks"
ARMS = {
    "papermill": ["-m", "papermill", "--no-progress-bar", "--log-level", "WARNING", "-k", "python3"],
    "gpuflow": ["-m", "gpuflow.execute", "--no-progress-bar", "--log-level", "WARNING"],
    "gpuflow_fresh_cache": ["-m", "gpuflow.execute", "--no-progress-bar", "--log-level", "WARNING"],
    "gpuflow_rmm_off": ["-m", "gpuflow.execute", "--no-progress-bar", "--log-level", "WARNING", "--rmm", "off"],
}


def timed(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    return time.perf_counter() - t0, done.returncode, (done.stderr or done.stdout)[-400:]


def _preflights(repeats: int, fresh_cache: bool, start_only: bool = False) -> tuple[list[float], dict[str, Any]]:
    from gpuflow.gpu import devices

    runs, facts = [], {}
    with tempfile.TemporaryDirectory() as shared:
        for _ in range(repeats):
            # a fresh cache dir each time: the libcuda child runs every time, as on a new pod
            os.environ["GPUFLOW_CACHE_DIR"] = tempfile.mkdtemp() if fresh_cache else shared
            t0 = time.perf_counter()
            if start_only:
                check = devices.Preflight.start("require")
                runs.append(time.perf_counter() - t0)
                facts = check.settle()  # not timed: execute's kernel starts meanwhile
            else:
                facts = devices.preflight("require")
                runs.append(time.perf_counter() - t0)
    os.environ.pop("GPUFLOW_CACHE_DIR", None)
    return runs, facts


def _ms(runs: list[float]) -> list[float]:
    return [round(r * 1000, 1) for r in runs]


def preflight(repeats: int) -> dict[str, Any]:
    started, _ = _preflights(repeats, fresh_cache=True, start_only=True)
    cold, facts = _preflights(repeats, fresh_cache=True)
    warm, _ = _preflights(repeats + 1, fresh_cache=False)
    warm = warm[1:]  # the first filled the cache
    smi = [timed(["nvidia-smi", "-L"])[0] for _ in range(repeats)]
    return {"median_ms": round(statistics.median(warm) * 1000, 1), "runs_ms": _ms(warm),
            "fresh_start_median_ms": round(statistics.median(started) * 1000, 1), "fresh_start_runs_ms": _ms(started),
            "uncached_median_ms": round(statistics.median(cold) * 1000, 1), "uncached_runs_ms": _ms(cold),
            "nvidia_smi_L_median_ms": round(statistics.median(smi) * 1000, 1),
            "facts": {k: facts.get(k) for k in ("visible", "devices", "driver", "cuda_version", "checks")}}


# The probe's child, one step more each time (`python -I -S`, as devices.driver_count runs it).
_LIBCUDA = "import ctypes; cu = ctypes.CDLL('libcuda.so.1')"
PROBE_PARTS = {
    "python -I -S": "pass",
    "dlopen libcuda": _LIBCUDA,
    "+ cuDriverGetVersion": _LIBCUDA + "; v = ctypes.c_int(); cu.cuDriverGetVersion(ctypes.byref(v))",
    "+ cuInit": _LIBCUDA + "; cu.cuInit(0)",
    "+ cuDeviceGetCount": _LIBCUDA + "; cu.cuInit(0); n = ctypes.c_int(); cu.cuDeviceGetCount(ctypes.byref(n))",
}
# The guard cell's work outside a kernel, against a notebook's own first CuPy use.
_SETUP = "from gpuflow._embedded.kernel_guard import setup_rmm; "
GUARD_PARTS = {
    "import cupy; cupy.zeros(1)": "import cupy; cupy.zeros(1)",
    "import cupy, rmm": "import cupy, rmm",
    "guard, pool": _SETUP + "setup_rmm('pool')",
    "guard, pool + cupy.zeros(1)": _SETUP + "setup_rmm('pool'); import cupy; cupy.zeros(1)",
    "guard, --rmm off": _SETUP + "setup_rmm('off')",
}


def parts(repeats: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for flags, cases in ((["-I", "-S"], PROBE_PARTS), ([], GUARD_PARTS)):
        for name, code in cases.items():
            runs = []
            for _ in range(repeats):
                wall, rc, tail = timed([sys.executable, *flags, "-c", code])
                runs.append(wall if rc == 0 else float("nan"))
            found[name] = {"median_ms": round(statistics.median(runs) * 1000, 1), "runs_ms": _ms(runs)}
    return found


def execute(nb: Path, out: Path, repeats: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {arm: [] for arm in ARMS}
    setup: list[float] = []
    failures: list[str] = []
    for i in range(repeats + 1):  # the first round warms caches (CuPy's kernels, the OS's files): not counted
        order = list(ARMS) if i % 2 == 0 else list(reversed(ARMS))
        for arm in order:
            target = out / f"{nb.stem}-{arm}.ipynb"
            env = None
            if arm == "gpuflow_fresh_cache":  # as on a new pod: nothing kept from an earlier run
                env = {**os.environ, "GPUFLOW_CACHE_DIR": tempfile.mkdtemp(prefix="cache-", dir=out)}
            wall, rc, tail = timed([sys.executable, *ARMS[arm], str(nb), str(target)], env)
            if rc != 0:
                failures.append(f"{arm} exit {rc}: {tail}")
                continue
            if i == 0:
                continue
            samples[arm].append(wall)
            if arm.startswith("gpuflow") and arm != "gpuflow_rmm_off":
                guard = json.loads(target.read_text()).get("metadata", {}).get("gpuflow", {}).get("guard", {})
                if isinstance(guard.get("setup_s"), (int, float)):
                    setup.append(guard["setup_s"])
    med = {arm: round(statistics.median(v), 3) if v else None for arm, v in samples.items()}
    base = med["papermill"]
    return {
        "notebook": nb.name, "median_s": med, "samples_s": samples,
        "ratio": {arm: round(v / base, 3) if v and base else None for arm, v in med.items()},
        "guard_setup_s_median": round(statistics.median(setup), 3) if setup else None,
        "failures": failures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--notebooks", nargs="*", type=Path, default=sorted(NOTEBOOKS.glob("*.ipynb")))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "overhead-notebooks"
    work.mkdir(exist_ok=True)
    data: dict[str, Any] = {"preflight": preflight(args.repeats), "parts": parts(args.repeats), "notebooks": []}
    for nb in args.notebooks:  # written after each notebook: a run cut short keeps what it measured
        data["notebooks"].append(execute(nb, work, args.repeats))
        (args.out / "gpu-overhead.json").write_text(json.dumps(data, indent=1) + "\n")
    pre = data["preflight"]
    print(f"preflight: median {pre['median_ms']} ms of {args.repeats} {pre['runs_ms']}; fresh cache each time: "
          f"before the kernel starts {pre['fresh_start_median_ms']} ms {pre['fresh_start_runs_ms']}, the whole check "
          f"with the libcuda child {pre['uncached_median_ms']} ms {pre['uncached_runs_ms']}; "
          f"nvidia-smi -L alone {pre['nvidia_smi_L_median_ms']} ms")
    for name, part in data["parts"].items():
        print(f"  {name:<30} {part['median_ms']:>8} ms {part['runs_ms']}")
    print(f"{'notebook':<26} {'papermill s':>11} {'gpuflow s':>10} {'ratio':>6} {'fresh s':>8} {'ratio':>6} "
          f"{'rmm off s':>10} {'ratio':>6} {'guard s':>8}")
    for row in data["notebooks"]:
        m, r = row["median_s"], row["ratio"]
        print(f"{row['notebook']:<26} {m['papermill']!s:>11} {m['gpuflow']!s:>10} {r['gpuflow']!s:>6} "
              f"{m['gpuflow_fresh_cache']!s:>8} {r['gpuflow_fresh_cache']!s:>6} "
              f"{m['gpuflow_rmm_off']!s:>10} {r['gpuflow_rmm_off']!s:>6} {row['guard_setup_s_median']!s:>8}")
        for failure in row["failures"][:2]:
            print(f"  FAILED {failure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
