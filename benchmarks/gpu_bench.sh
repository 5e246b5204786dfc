#!/bin/sh
# The GPU rows of docs/benchmarks.md, and the flow rows, on a GPU machine. Writes JSON into
# "$OUT" (default ./bench-out/gpu) that `python -m benchmarks --include-json`
# merges into the CPU table:
#   OUT=/tmp/gpu sh benchmarks/gpu_bench.sh
#   python -m benchmarks --only 1 --include-json /tmp/gpu/flow-rows.json --include-json /tmp/gpu/row8.json
# The RMM pool vs CuPy default and the 4-notebooks-on-2-GPUs timings come from
# benchmarks/gpu_suite.sh (h/gpu) when it is present; this script runs it.
set -eu
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
OUT="${OUT:-$PWD/bench-out/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi -L > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi: GPU rows will say so" >&2

# Rows 2 and 4 (execute overhead, whole flow) on this machine, as on the CPU one.
"$PY" -m benchmarks --only 2,4 --out-dir "$OUT/bench" --json "$OUT/flow-rows.json" | tee "$OUT/flow-rows.txt"

# Row 8: the whole lite flow's wall time (target: under 60 s on an H100), 3 runs.
lite_times=""
for i in 1 2 3; do
  rm -rf "$OUT/lite-run"
  t0=$("$PY" -c 'import time; print(time.perf_counter())')
  rc=0
  "$PY" -m gpuflow.run --profile lite --gpu require --out "$OUT/lite-run" > "$OUT/lite-run-$i.log" 2>&1 || rc=$?
  t1=$("$PY" -c 'import time; print(time.perf_counter())')
  lite_times="$lite_times $("$PY" -c "print(f'{$t1 - $t0:.3f}:$rc')")"
done

"$PY" - "$OUT/row8.json" $lite_times <<'PYEOF'
import json, statistics, sys
from benchmarks.harness import Line, machine
out, *runs = sys.argv[1:]
times = [float(r.split(":")[0]) for r in runs]
codes = [int(r.split(":")[1]) for r in runs]
ok = all(c == 0 for c in codes)
line = Line(row="8", case="lite flow wall time", gpuflow=statistics.median(times), runs=len(times),
            target="< 60 s", met=ok and statistics.median(times) < 60,
            note="" if ok else f"exit codes {codes}: see lite-run-*.log",
            commands={"gpuflow": "python -m gpuflow.run --profile lite --gpu require"},
            samples={"gpuflow": times})
json.dump({"machine": machine(), "quick": False, "lines": [line.to_json()]}, open(out, "w"), indent=2)
PYEOF

# The GPU path's own cost: preflight (median of 5) and execute vs papermill on the short
# CuPy/Numba notebooks of benchmarks/gpu_notebooks (median of 5 alternating runs).
"$PY" -m benchmarks.gpu_overhead --out "$OUT/overhead" | tee "$OUT/overhead.txt"

if [ -f benchmarks/gpu_suite.sh ]; then
  OUT="$OUT/suite" sh benchmarks/gpu_suite.sh || echo "gpu_suite.sh failed: see $OUT/suite" >&2
else
  echo "benchmarks/gpu_suite.sh not present: RMM pool vs default and multi-GPU rows not run" >&2
fi
echo "wrote $OUT/flow-rows.json $OUT/row8.json" >&2
