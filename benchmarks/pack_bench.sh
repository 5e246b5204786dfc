#!/bin/sh
# `gpuflow run --pack` on a GPU machine: 8 short CuPy notebooks
# (benchmarks/pack_notebooks, each under 5 GiB and 30 % of a GPU) run serially
# on one GPU, then packed on one GPU and, when two are visible, on two; then a
# notebook whose planted history is far below what it uses, to show the
# out-of-memory retry. Writes "$OUT"/pack_bench.json (see docs/benchmarks.md)
# plus each run's dir and log. Exit 0: every target met; 1: one missed;
# 2: could not run (no GPU, no CuPy; pack_bench.json says why).
#
# On the device, gpuflow installed from wheels:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#     --upgrade --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH JUPYTER_PATH=/tmp/site/share/jupyter \
#     sh benchmarks/pack_bench.sh
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/bench-out/pack}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-$PWD}"
case ":$PYTHONPATH:" in *":$PWD:"*) ;; *) PYTHONPATH="$PYTHONPATH:$PWD" ;; esac
export PYTHONPATH
{ nvidia-smi; nvidia-smi -L; } > "$OUT/nvidia-smi.txt" 2>&1 || echo "pack_bench: nvidia-smi failed (see $OUT/nvidia-smi.txt)" >&2
"$PY" -c 'import gpuflow, sys; print("gpuflow from", gpuflow.__file__, "python", sys.version.split()[0])' \
  > "$OUT/env.txt" 2>&1 || { echo "pack_bench: gpuflow is not importable (see $OUT/env.txt)" >&2; exit 2; }
"$PY" -m jupyter kernelspec list >> "$OUT/env.txt" 2>&1 || true
rc=0
"$PY" -m benchmarks.pack_bench --out "$OUT" || rc=$?
echo "pack_bench: exit $rc; results in $OUT/pack_bench.json" >&2
exit "$rc"
