#!/bin/sh
# The GPU guard's proof on a GPU machine: the `gpu`-marked tests in
# tests/gpu (preflight visible/hidden, each RMM policy in a real kernel, the
# notebooks whose own RMM cell would crash, telemetry, scRNA at lite size with
# the RMM pool on and off). Installs nothing: gpuflow is used from the source
# tree through PYTHONPATH. Writes into "$OUT" (default ./bench-out/gpu-suite):
#   doctor.json, nvidia-smi.txt, pytest-gpu.log, gpu-junit.xml and the JSON
#   the tests leave in $GPUFLOW_GPU_OUT (preflight_*.json, policy_*.json,
#   bad_argument.json, hidden_device.json, telemetry.json, scrna_lite.json).
#
# On the device machine (Python 3.12, CuPy for CUDA 13), with the wheels from
# ../shared/device/wheels.sh carried as .whl:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#     --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   sh benchmarks/gpu_suite.sh            # GPUFLOW_GPU_REPEATS=2 for two runs per arm
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/bench-out/gpu-suite}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export GPUFLOW_GPU_OUT="$OUT"
export GPUFLOW_GPU_REPEATS="${GPUFLOW_GPU_REPEATS:-2}"

{ nvidia-smi; nvidia-smi -L; } > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed: see $OUT/nvidia-smi.txt" >&2
"$PY" -m gpuflow.doctor --json > "$OUT/doctor.json" 2> "$OUT/doctor.err" || true

rc=0
"$PY" -m pytest -m gpu tests/gpu -v -p no:cacheprovider --timeout 900 \
  --junitxml "$OUT/gpu-junit.xml" > "$OUT/pytest-gpu.log" 2>&1 || rc=$?
tail -n 30 "$OUT/pytest-gpu.log"

if [ -f "$OUT/scrna_lite.json" ]; then
  "$PY" - "$OUT/scrna_lite.json" <<'PYEOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"GPU: {d['gpu']}  (lite {d['params']['n_cells']:,} x {d['params']['n_genes']:,}, best of {d['repeats']})")
stages = list(d["pool"]["stages"])
print(f"{'stage':<10} {'pool s':>8} {'off s':>8}")
for s in stages:
    print(f"{s:<10} {d['pool']['stages'][s]:>8.3f} {d['off']['stages'].get(s, float('nan')):>8.3f}")
print(f"{'total':<10} {d['pool']['total_s']:>8.3f} {d['off']['total_s']:>8.3f}   pool/off = {d['pool_over_off_total']}")
for arm in ("pool", "off"):
    r = d[arm]
    print(f"{arm}: NVML peak {r['peak_memory_bytes'] / 2**30:.2f} GiB, RMM per-cell peak "
          f"{(r['rmm_peak_bytes'] or 0) / 2**30:.2f} GiB, mean util {r['mean_utilization_pct']}%")
PYEOF
fi
echo "gpu_suite: pytest exit $rc; results in $OUT" >&2
exit "$rc"
