"""GPU facts in the runner process, before any kernel starts (preflight), and
the public notebook API `setup_rmm`.

The Tekton scripts this replaces got `cudaErrorNoDevice` and RMM's `.msg`
AttributeError in pods that asked for a GPU but did not see one:
the check here names what was looked at and what was missing, in one line.
CUDA is never initialised in this process: the device count comes from a
child Python that asks libcuda, so a broken driver cannot crash the runner.
The check is one nvidia-smi call and, once per boot, driver and visibility,
that child; cuInit is the expensive part, so `Preflight` lets a caller run
the child while it starts its kernel.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpuflow.core import proc
from gpuflow.core.cachedir import cache_dir
from gpuflow.core.errors import CommandError, NoGPUError, UsageError
from gpuflow.core.fsutil import atomic_write_text
from gpuflow.core.log import log

HIDDEN_VALUES = ("", "void", "none", "-1", "nodevfiles")
_SMI_QUERY = "index,name,memory.total,driver_version,uuid,compute_cap"
# drivers before 510 do not know `compute_cap` and refuse the whole query
_SMI_QUERY_OLD = _SMI_QUERY.removesuffix(",compute_cap")
PROBE_TIMEOUT_S = 20.0
# The child that asks the CUDA driver itself (libcuda through ctypes: no CuPy,
# no CUDA runtime, nothing to import but the standard library), so a broken
# driver that hangs or aborts in cuInit takes the child down, not the runner.
# CUDA_ERROR_NO_DEVICE (100) from cuInit is a count of 0, not a failure.
_DRIVER_PROBE = r"""
import ctypes, json
out = {}
try:
    cu = ctypes.CDLL("libcuda.so.1")
except OSError:
    out["libcuda"] = "not found"
else:
    n, v = ctypes.c_int(0), ctypes.c_int(0)
    if cu.cuDriverGetVersion(ctypes.byref(v)) == 0:
        out["cuda_driver_version"] = v.value
    rc = cu.cuInit(0)
    if rc == 0:
        rc = cu.cuDeviceGetCount(ctypes.byref(n))
    out["libcuda"] = n.value if rc == 0 else 0 if rc == 100 else f"error {rc}"
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
    """Devices and driver from one nvidia-smi call, or why not.
    nvidia-smi ignores CUDA_VISIBLE_DEVICES: it lists what the node has."""
    exe = proc.which("nvidia-smi", path=env.get("PATH"))
    if exe is None:
        return {"status": "not found", "devices": []}
    try:
        try:
            query = _smi_query(exe, _SMI_QUERY, env)
        except CommandError as exc:
            if "compute_cap" not in f"{exc} {exc.stdout} {exc.stderr}":
                raise
            query = _smi_query(exe, _SMI_QUERY_OLD, env)
    except (CommandError, UsageError, OSError) as exc:
        return {"status": f"failed ({str(exc).splitlines()[0]})", "devices": []}
    devices = parse_smi_query(query)
    return {
        "status": f"{len(devices)} GPU(s)" if devices else "no devices listed",
        "devices": devices,
        "driver": devices[0].get("driver") if devices else None,
    }


def _smi_query(exe: str, fields: str, env: Mapping[str, str]) -> str:
    return proc.call([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                     env=env, timeout=30, echo=False).stdout


def parse_smi_query(text: str) -> list[dict[str, Any]]:
    """Rows of `nvidia-smi --query-gpu=index,name,memory.total,driver_version,uuid[,compute_cap]
    --format=csv,noheader,nounits`; lines that are not such rows are skipped."""
    devices = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        mem = int(float(parts[2])) if re.fullmatch(r"[\d.]+", parts[2]) else None
        device: dict[str, Any] = {"index": int(parts[0]), "name": parts[1], "memory_mib": mem, "driver": parts[3]}
        if len(parts) > 4 and parts[4].startswith("GPU-"):
            device["uuid"] = parts[4]
        if len(parts) > 5 and re.fullmatch(r"\d+\.\d+", parts[5]):
            device["compute_capability"] = parts[5]  # "9.0": what a notebook's `requires` compares with
        devices.append(device)
    return devices


def driver_count(env: Mapping[str, str], python: str | None = None) -> dict[str, Any]:
    """The CUDA driver's device count and version from a child process with a
    timeout (CUDA init may hang or abort; the runner must survive it)."""
    try:
        # -I -S: no site packages to import, so the child starts in tens of milliseconds
        out = proc.call([python or sys.executable, "-I", "-S", "-c", _DRIVER_PROBE], env=env,
                        timeout=PROBE_TIMEOUT_S, check=False, echo=False)
        return parse_probe(out.stdout)
    except (CommandError, UsageError, OSError) as exc:
        return {"libcuda": f"probe failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"}


def parse_probe(stdout: str) -> dict[str, Any]:
    """The probe's last line of JSON; a child that died says so."""
    try:
        data = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"libcuda": "probe failed (no answer: the CUDA driver may have crashed the child)"}
    return dict(data) if isinstance(data, dict) else {"libcuda": "probe failed (unreadable answer)"}


def _probe_key(env: Mapping[str, str], smi: Mapping[str, Any]) -> str | None:
    """What the driver probe's answer depends on: this boot, the driver and
    its devices as nvidia-smi lists them, and the visibility variables. None
    (no reuse) when nvidia-smi listed nothing to pin the answer to."""
    if not smi.get("devices"):
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    parts = [boot, json.dumps(smi["devices"], sort_keys=True),
             *(f"{k}={env.get(k)}" for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _probe_path(env: Mapping[str, str], smi: Mapping[str, Any]) -> Path | None:
    key = _probe_key(env, smi)
    return cache_dir() / "gpu-probe" / f"{key}.json" if key else None


def kept_probe(env: Mapping[str, str], smi: Mapping[str, Any]) -> dict[str, Any] | None:
    """The driver's answer kept by an earlier `ask_driver` for this boot,
    driver, device list and visibility, or None."""
    path = _probe_path(env, smi)
    if path is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        kept = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(kept, dict) and isinstance(kept.get("libcuda"), int) and kept["libcuda"] > 0:
            return {**kept, "reused": True}
    return None


def ask_driver(env: Mapping[str, str], smi: Mapping[str, Any]) -> dict[str, Any]:
    """`driver_count`, kept for `kept_probe` when it counts one or more:
    cuInit alone costs about a quarter of a second on an H100, ten times
    nvidia-smi, so it is asked once per boot, driver, device list and
    visibility. No device, or a failure, is asked again next time."""
    counts = driver_count(env)
    path = _probe_path(env, smi)
    if path is not None and isinstance(counts.get("libcuda"), int) and counts["libcuda"] > 0:
        with contextlib.suppress(OSError):
            atomic_write_text(path, json.dumps(counts))
    return counts


def cuda_version(code: Any) -> str | None:
    """cuDriverGetVersion's 13000 -> '13.0'."""
    return f"{code // 1000}.{code % 1000 // 10}" if isinstance(code, int) and code > 0 else None


def detect(env: Mapping[str, str] | None = None, *, runtime: bool = True) -> dict[str, Any]:
    """Every GPU fact the runner can gather without initialising CUDA itself:
    one nvidia-smi call and the driver probe in a child (see `Detection`)."""
    return Detection.start(env, runtime=runtime).facts()


class Detection:
    """A detection whose driver probe may still be running.

    cuInit in the probe's child costs about 0.3 s on an H100 the first time
    a pod asks, ten times nvidia-smi. When nvidia-smi has listed the devices,
    that answer is provisional and the probe goes on in a background thread,
    so that its cost overlaps the kernel's start; `facts()` waits for it. When
    the variables hide every device, or nvidia-smi listed none (no nvidia-smi
    in the image, say), the probe is the only voice left and is waited for at
    once, so a provisional answer is never "no GPU" where the driver sees one.
    """

    def __init__(self, env: dict[str, str], smi: dict[str, Any], hidden: bool,
                 counts: dict[str, Any] | None) -> None:
        self.env, self.smi, self.hidden = env, smi, hidden
        self._counts = counts  # None while the probe runs
        self._thread: threading.Thread | None = None
        self.waited_s = 0.0  # how long `facts()` waited for the probe

    @classmethod
    def start(cls, env: Mapping[str, str] | None = None, *, runtime: bool = True) -> Detection:
        env = dict(os.environ if env is None else env)
        hidden = any(env_visibility(name, env)[0] is False for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"))
        smi = nvidia_smi(env)
        if hidden or not runtime:
            return cls(env, smi, hidden, {})
        kept = kept_probe(env, smi)
        if kept is not None or not smi["devices"]:
            return cls(env, smi, hidden, kept if kept is not None else ask_driver(env, smi))
        detection = cls(env, smi, hidden, None)
        # a daemon: a probe stuck in a broken driver must not hold the runner's
        # exit; the child is stopped by its timeout or by the parent-death signal
        detection._thread = threading.Thread(target=detection._probe, name="gpuflow-driver-probe", daemon=True)
        detection._thread.start()
        return detection

    def _probe(self) -> None:
        self._counts = ask_driver(self.env, self.smi)

    @property
    def pending(self) -> bool:
        return self._counts is None

    def provisional(self) -> dict[str, Any]:
        """The facts as known now, without waiting: nvidia-smi's devices
        stand for the driver's count while the probe runs."""
        return _facts(self.env, self.smi, self._counts or {}, self.hidden)

    def facts(self) -> dict[str, Any]:
        """The facts with the driver's answer, waiting for the probe if it runs."""
        if self._thread is not None:
            t0 = time.perf_counter()
            self._thread.join(PROBE_TIMEOUT_S + 5)
            self.waited_s = time.perf_counter() - t0
        counts = self._counts if self._counts is not None else {"libcuda": "probe failed (no answer in time)"}
        return _facts(self.env, self.smi, counts, self.hidden)


def _facts(env: Mapping[str, str], smi: Mapping[str, Any], counts: Mapping[str, Any], hidden: bool) -> dict[str, Any]:
    runtime_n = counts.get("libcuda") if isinstance(counts.get("libcuda"), int) else None
    if hidden:
        visible = False
    elif runtime_n is not None:
        visible = runtime_n > 0
    else:
        visible = bool(smi["devices"])
    checks = [env_visibility(name, env)[1] for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")]
    checks.append(f"nvidia-smi: {smi['status']}")
    if "libcuda" in counts:
        value = counts["libcuda"]
        checks.append(f"libcuda: {f'{value} device(s)' if isinstance(value, int) else value}")
    return {
        "visible": visible,
        "devices": smi["devices"],
        "driver": smi.get("driver"),
        "cuda_version": cuda_version(counts.get("cuda_driver_version")),
        "runtime_devices": runtime_n,
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
    return Preflight.start(policy, env).settle()


class Preflight:
    """`preflight` in two halves, for a caller with something to do meanwhile:
    `start` returns at once with `facts` (provisional while the driver probe
    runs, see `Detection`), and `settle` waits for the probe and applies the
    policy. `gpuflow execute` settles once its kernel is up, before the first
    cell: the probe's cuInit then costs the notebook nothing."""

    def __init__(self, policy: str, detection: Detection | None) -> None:
        self.policy, self.detection = policy, detection
        self._settled: dict[str, Any] | None = None

    @classmethod
    def start(cls, policy: str = "auto", env: Mapping[str, str] | None = None) -> Preflight:
        """Raises NoGPUError at once, as `settle` would, when the answer is
        already final: nothing to overlap, and no kernel is started for nothing."""
        check = cls(policy, None if policy == "off" else Detection.start(env))
        if check.detection is None or not check.detection.pending:
            check.settle()
        return check

    @classmethod
    def known(cls, policy: str, facts: Mapping[str, Any]) -> Preflight:
        """A check already made (`gpuflow run` checks once per run)."""
        done = cls(policy, None)
        done._settled = dict(facts)
        return done

    @property
    def facts(self) -> dict[str, Any]:
        if self._settled is not None:
            return self._settled
        if self.detection is None:
            return {"gpu_policy": "off", "visible": None, "devices": [], "checks": ["skipped (--gpu off)"]}
        return {"gpu_policy": self.policy, **self.detection.provisional()}

    def settle(self) -> dict[str, Any]:
        """The final facts; raises NoGPUError under require when no device is
        visible, warns under auto. Once: later calls return the same facts."""
        if self._settled is not None:
            return self._settled
        if self.detection is None:
            self._settled = self.facts
            return self._settled
        facts = {"gpu_policy": self.policy, **self.detection.facts()}
        if self.detection.waited_s >= 0.001:
            facts["probe_wait_s"] = round(self.detection.waited_s, 3)
        self._settled = facts
        if facts["visible"]:
            names = ", ".join(f"{d.get('name')} ({d.get('memory_mib') or '?'} MiB)" for d in facts["devices"])
            shown = ", ".join(f"{what} {facts[key]}" for what, key in (("driver", "driver"), ("CUDA", "cuda_version"))
                              if facts[key])  # a driver that did not say its version is not "CUDA None"
            log.info(f"GPU: {names or str(facts['runtime_devices']) + ' device(s)'}" + (f"; {shown}" if shown else ""))
            return facts
        if self.policy == "require":
            err = NoGPUError(missing_line(facts))
            err.details = {"gpu": facts}
            raise err
        log.warning(f"{missing_line(facts)}; running on the CPU (--gpu require makes this an error)")
        return facts


def default_device(facts: Mapping[str, Any], env: Mapping[str, str] | None = None) -> str | None:
    """The node's index of the GPU an unpinned kernel uses (the first entry of
    CUDA_VISIBLE_DEVICES, an index or a UUID, else 0), or None without a
    visible GPU."""
    if not facts.get("visible"):
        return None
    first = dict(os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    if first.isdigit():
        return first
    for device in facts.get("devices") or []:
        if isinstance(device, dict) and device.get("uuid") and first.startswith(str(device["uuid"])[:12]):
            return str(device.get("index"))
    return "0"
