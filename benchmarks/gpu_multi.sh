#!/bin/sh
# 4 lite notebooks on 2 GPUs with the RMM pool applied in every kernel, against the same
# 4 on one GPU: the row of docs/run.md ("Measured: 4 notebooks on 2 GPUs"). Run it on a
# machine with two GPUs (nvidia-h100-x2), with the wheels (rmm-cu13 among them) carried as .whl:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH \
#     JUPYTER_PATH=/tmp/site/share/jupyter
#   OUT=/tmp/multi sh benchmarks/gpu_multi.sh
# Writes "$OUT/gpu-multi.json" (makespans, slots, and each output notebook's guard record)
# and exits 1 when any kernel did not get the pool (`applied` other than `pool`).
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/bench-out/gpu-multi}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import rmm, cupy; print('rmm', rmm.__version__, 'cupy', cupy.__version__)" \
  || { echo "rmm or cupy is not importable here: the guard would fall back to CuPy's allocator" >&2; exit 2; }

NBS=$(mktemp -d)
for i in 1 2 3 4; do cp notebooks/scrna_preprocessing.ipynb "$NBS/scrna_$i.ipynb"; done
flow() {  # $1: --gpus value, $2: output folder
  "$PY" -m gpuflow.run --repo "$NBS" --notebooks '*.ipynb' --profile lite -p n_cells 50000 -p n_genes 10000 \
    --gpu require --rmm pool --gpus "$1" --out "$2" > "$2.log" 2>&1
}
flow 0 "$OUT/warm-up" || true  # fills CuPy's kernel cache; not timed
flow 0 "$OUT/serial"; serial_rc=$?
flow 0,1 "$OUT/parallel"; parallel_rc=$?

"$PY" - "$OUT" "$serial_rc" "$parallel_rc" <<'PYEOF'
import json, sys
from pathlib import Path
out, codes = Path(sys.argv[1]), {"serial": int(sys.argv[2]), "parallel": int(sys.argv[3])}
data = {"exit_codes": codes}
for arm in ("serial", "parallel"):
    run_dir = next((out / arm).glob("*/run.json")).parent
    run = json.loads((run_dir / "run.json").read_text())
    guards = {}
    for nb in sorted(run_dir.glob("*/*_output*.ipynb")):
        guards[nb.parent.name] = json.loads(nb.read_text())["metadata"].get("gpuflow", {}).get("guard", {})
    data[arm] = {"makespan_s": run["makespan_s"], "slots": run["slots"],
                 "applied": {k: g.get("applied") for k, g in guards.items()},
                 "fallback": {k: g.get("fallback") for k, g in guards.items()},
                 "setup_s": {k: g.get("setup_s") for k, g in guards.items()}}
data["parallel_over_serial"] = round(data["parallel"]["makespan_s"] / data["serial"]["makespan_s"], 3)
(out / "gpu-multi.json").write_text(json.dumps(data, indent=1) + "\n")
for arm in ("serial", "parallel"):
    d = data[arm]
    slots = ", ".join(f"{k}: {v['notebooks']}" for k, v in d["slots"].items())
    print(f"{arm}: makespan {d['makespan_s']:.1f} s, exit {codes[arm]}, "
          f"applied {sorted(set(map(str, d['applied'].values())))}, slots {slots}")
print(f"parallel / serial = {data['parallel_over_serial']}")
ok = all(v == "pool" for arm in ("serial", "parallel") for v in data[arm]["applied"].values())
ok = ok and len(data["parallel"]["applied"]) == 4 and codes == {"serial": 0, "parallel": 0}
print("pool applied in all kernels" if ok else "NOT every kernel got the pool: see gpu-multi.json")
sys.exit(0 if ok else 1)
PYEOF
