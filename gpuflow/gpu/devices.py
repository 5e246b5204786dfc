"""GPU facts in the runner process, before any kernel starts (preflight), and
the public notebook API `setup_rmm`.

The Tekton scripts this replaces got `cudaErrorNoDevice` and RMM's `.msg`
AttributeError in pods that asked for a GPU but did not see one:
the check here names what was looked at and what was missing, in one line.
CUDA is never initialised in this process: the runtime count comes from a
child Python, so a broken driver cannot crash the runner.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from gpuflow.core import proc
from gpuflow.core.errors import CommandError, NoGPUError, UsageError
from gpuflow.core.log import log

HIDDEN_VALUES = ("", "void", "none", "-1", "nodevfiles")
_SMI_QUERY = "index,name,memory.total,driver_version"
_RUNTIME_PROBE = r"""
import json
out = {}
try:
    from cuda.bindings import runtime as rt
    err, n = rt.cudaGetDeviceCount()
    out["cuda-bindings"] = int(n) if int(err) == 0 else f"error {err}"
    err, v = rt.cudaRuntimeGetVersion()
    if int(err) == 0:
        out["runtime_version"] = int(v)
except ImportError:
    out["cuda-bindings"] = "not importable"
except Exception as exc:
    out["cuda-bindings"] = f"{type(exc).__name__}: {exc}"
try:
    import cupy
    out["cupy"] = int(cupy.cuda.runtime.getDeviceCount())
except ImportError:
    out["cupy"] = "not importable"
except Exception as exc:
    out["cupy"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
print(json.dumps(out))
"""


def env_visibility(name: str, env: Mapping[str, str]) -> tuple[bool | None, str]:
    """(False, shown) when the variable hides every device, (None, shown) when
    it is unset (no opinion), (True, shown) otherwise."""
    if name not in env:
        return None, f"{name} unset"
    value = env[name]
    first = value.split(",")[0].strip().lower()
    # CUDA stops parsing CUDA_VISIBLE_DEVICES at the first invalid entry
    if value.strip().lower() in HIDDEN_VALUES or first in ("-1",):
        return False, f"{name}={value!r}"
    return True, f"{name}={value!r}"


def nvidia_smi(env: Mapping[str, str]) -> dict[str, Any]:
    """Devices, driver and CUDA version from nvidia-smi, or why not.
    nvidia-smi ignores CUDA_VISIBLE_DEVICES: it lists what the node has."""
    exe = proc.which("nvidia-smi", path=env.get("PATH"))
    if exe is None:
        return {"status": "not found", "devices": []}
    try:
        listing = proc.call([exe, "-L"], env=env, timeout=30).stdout
        query = proc.call([exe, f"--query-gpu={_SMI_QUERY}", "--format=csv,noheader,nounits"],
                         env=env, timeout=30, check=False).stdout
        banner = proc.call([exe], env=env, timeout=30, check=False).stdout
    except (CommandError, UsageError, OSError) as exc:
        return {"status": f"failed ({str(exc).splitlines()[0]})", "devices": []}
    devices = []
    for line in query.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            mem = int(float(parts[2])) if re.fullmatch(r"[\d.]+", parts[2]) else None
            devices.append({"index": int(parts[0]), "name": parts[1], "memory_mib": mem, "driver": parts[3]})
    if not devices:  # an old nvidia-smi without --query-gpu: fall back to -L
        devices = [{"index": i, "name": m.group(1).strip()}
                   for i, m in enumerate(re.finditer(r"^GPU \d+: ([^(]+)", listing, re.M))]
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", banner)
    return {
        "status": f"{len(devices)} GPU(s)" if devices else "no devices listed",
        "devices": devices,
        "driver": devices[0].get("driver") if devices else None,
        "cuda_version": cuda.group(1) if cuda else None,
    }


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def runtime_count(env: Mapping[str, str], python: str | None = None) -> dict[str, Any]:
    """The CUDA runtime's device count via cuda-bindings/CuPy, in a child
    process (CUDA init may hang or abort; the runner must survive it)."""
    if not (_importable("cupy") or _importable("cuda.bindings")):
        return {"cupy": "not importable", "cuda-bindings": "not importable"}
    try:
        out = proc.call([python or sys.executable, "-c", _RUNTIME_PROBE], env=env, timeout=120, check=False)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))
    except (CommandError, UsageError, ValueError, IndexError) as exc:
        return {"cupy": f"probe failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"}


def detect(env: Mapping[str, str] | None = None, *, runtime: bool = True) -> dict[str, Any]:
    """Every GPU fact the runner can gather without initialising CUDA itself."""
    env = dict(os.environ if env is None else env)
    cuda_vis, cuda_shown = env_visibility("CUDA_VISIBLE_DEVICES", env)
    nv_vis, nv_shown = env_visibility("NVIDIA_VISIBLE_DEVICES", env)
    smi = nvidia_smi(env)
    counts = runtime_count(env) if runtime else {}
    runtime_n = max((v for k, v in counts.items() if k in ("cupy", "cuda-bindings") and isinstance(v, int)),
                    default=None)
    if cuda_vis is False or nv_vis is False:
        visible = False
    elif runtime_n is not None:
        visible = runtime_n > 0
    else:
        visible = bool(smi["devices"])
    checks = [cuda_shown, nv_shown, f"nvidia-smi: {smi['status']}"]
    checks += [f"{k}: {v if not isinstance(v, int) else f'{v} device(s)'}"
               for k, v in counts.items() if k in ("cupy", "cuda-bindings")]
    return {
        "visible": visible,
        "devices": smi["devices"],
        "driver": smi.get("driver"),
        "cuda_version": smi.get("cuda_version"),
        "runtime_devices": runtime_n,
        "runtime_version": counts.get("runtime_version"),
        "checks": checks,
        "env": {"CUDA_VISIBLE_DEVICES": env.get("CUDA_VISIBLE_DEVICES"),
                "NVIDIA_VISIBLE_DEVICES": env.get("NVIDIA_VISIBLE_DEVICES")},
    }


def missing_line(facts: Mapping[str, Any]) -> str:
    """`no CUDA device visible: CUDA_VISIBLE_DEVICES='' ; nvidia-smi: not found; ...`"""
    return "no CUDA device visible: " + "; ".join(c for c in facts["checks"] if "unset" not in c)


def preflight(policy: str = "auto", env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Check for a device under `policy` (auto|require|off); raises NoGPUError
    (exit 4) under require when none is visible; warns under auto."""
    if policy == "off":
        return {"gpu_policy": "off", "visible": None, "devices": [], "checks": ["skipped (--gpu off)"]}
    facts = {"gpu_policy": policy, **detect(env)}
    if facts["visible"]:
        names = ", ".join(f"{d.get('name')} ({d.get('memory_mib') or '?'} MiB)" for d in facts["devices"])
        log.info(f"GPU: {names or str(facts['runtime_devices']) + ' device(s)'}; driver {facts['driver']}, "
                 f"CUDA {facts['cuda_version']}")
        return facts
    if policy == "require":
        err = NoGPUError(missing_line(facts))
        err.details = {"gpu": facts}
        raise err
    log.warning(f"{missing_line(facts)}; running on the CPU (--gpu require makes this an error)")
    return facts
