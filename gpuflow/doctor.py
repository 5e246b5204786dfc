"""`gpuflow doctor`: the environment facts a GPU notebook step depends on, as a
table (or JSON), each problem with a one-line hint.

The Tekton scripts this replaces probed these by hand in every step (UIDs,
writable conda, /dev/shm, `ulimit -l`, nvidia-smi). Exit codes: 0 all good;
2 something required is missing (no papermill/nbconvert/ipykernel, no
nbconvert `lab` template, no kernel spec for the kernel, no git, no pytest
plugins, unwritable HOME, workspace or out dir); 4 `--gpu require` and no GPU.
"""
from __future__ import annotations

import argparse
import getpass
import importlib.metadata
import json
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpuflow.core import proc, tables
from gpuflow.core.errors import ConfigError, NoGPUError
from gpuflow.core.step import Step

PACKAGES = ("papermill", "nbconvert", "nbclient", "ipykernel", "rmm", "rmm-cu12", "rmm-cu13",
            "cupy", "cupy-cuda12x", "cupy-cuda13x", "nvidia-ml-py", "anndata", "scanpy")
REQUIRED_PACKAGES = ("papermill", "nbconvert", "ipykernel")


@dataclass(frozen=True, kw_only=True)
class Fact:
    name: str
    value: str
    ok: bool = True
    required: bool = False
    hint: str = ""


@dataclass(frozen=True, kw_only=True)
class DoctorReport:
    facts: list[Fact] = field(default_factory=list)
    gpu: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return ConfigError.exit_code if any(f.required and not f.ok for f in self.facts) else 0

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        rows = [("ok" if f.ok else ("ERR" if f.required else "warn"), f.name, f.value, f.hint) for f in self.facts]
        return tables.table(rows, header=("", "fact", "value", "hint"), caption=f"gpuflow doctor: exit {self.exit_code}")

    def table(self) -> str:
        width = max((len(f.name) for f in self.facts), default=10)
        rows = []
        for f in self.facts:
            mark = "ok " if f.ok else ("ERR" if f.required else "warn")
            rows.append(f"{mark:4} {f.name:<{width}}  {f.value}")
            if f.hint:
                rows.append(f"{'':4} {'':<{width}}  hint: {f.hint}")
        return "\n".join(rows)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tool(name: str, version_args: Sequence[str], exe: str | None = None) -> Fact:
    exe = exe or proc.which(name)
    if exe is None:
        return Fact(name=name, value="not found", ok=name != "pip", hint="" if name != "pip" else
                    "pip is missing: `python -m ensurepip` or install python3-pip")
    try:
        out = proc.call([exe, *version_args], timeout=30, check=False, echo=False)
        text = (out.stdout or out.stderr).strip().splitlines()
    except Exception as exc:  # a broken tool is a fact too
        text = [f"failed: {exc}"]
    return Fact(name=name, value=f"{exe} ({text[0] if text else '?'})")


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".gpuflow-doctor-"):
            return True
    except OSError:
        return False


def _owner_hint(path: Path, uid: int) -> str:
    try:
        owner = path.stat().st_uid
    except OSError:
        return ""
    return f"running as UID {uid} but {path} belongs to {owner}" if owner != uid else ""


def python_facts() -> list[Fact]:
    facts = [Fact(name="python", value=f"{sys.executable} ({sys.version.split()[0]})"),
             _tool("pip", ["-m", "pip", "--version"], exe=sys.executable), _tool("conda", ["--version"])]
    prefix = Path(os.environ.get("CONDA_PREFIX") or sys.prefix)
    if not os.access(prefix, os.W_OK):
        hint = _owner_hint(prefix, os.getuid()) or f"{prefix} is read-only"
        facts.append(Fact(name="env writable", value=f"{prefix}: no", ok=False,
                          hint=f"{hint}; `pip install --user` or a writable venv (never chown the image)"))
    return facts


def package_facts() -> list[Fact]:
    facts = []
    for dist in PACKAGES:
        version = _version(dist)
        if version is None and dist not in REQUIRED_PACKAGES:
            continue
        required = dist in REQUIRED_PACKAGES
        facts.append(Fact(name=dist, value=version or "not installed", ok=version is not None,
                          required=required, hint="" if version else f"pip install {dist}"))
    if not any(_version(d) for d in ("rmm", "rmm-cu12", "rmm-cu13")):
        facts.append(Fact(name="rmm", value="not installed", ok=False,
                          hint="GPU notebooks need rmm-cu12/rmm-cu13 for the RMM guard"))
    return facts


def kernel_facts() -> list[Fact]:
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        specs = KernelSpecManager().find_kernel_specs()
    except Exception as exc:
        return [Fact(name="kernelspecs", value=f"unreadable ({exc})", ok=False, required=True,
                     hint="pip install ipykernel jupyter_client")]
    shown = ", ".join(f"{k} ({v})" for k, v in sorted(specs.items())) or "none"
    ok = bool(specs)
    return [Fact(name="kernelspecs", value=shown, ok=ok, required=True,
                 hint="" if ok else "python -m ipykernel install --user --name python3")]


def run_facts(kernel: str, out: Path) -> list[Fact]:
    """What `gpuflow run` reaches for: the HTML template, the kernel, git, the
    pytest plugins, and a place to write the run."""
    from gpuflow.convert import find_template

    facts = []
    problem = find_template("lab")
    facts.append(Fact(name="nbconvert lab template", value="found" if problem is None else "missing",
                      ok=problem is None, required=True, hint=problem or ""))
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

        where = KernelSpecManager().get_kernel_spec(kernel).resource_dir
        facts.append(Fact(name=f"kernel {kernel}", value=where, required=True))
    except NoSuchKernel:
        facts.append(Fact(name=f"kernel {kernel}", value="no kernel spec", ok=False, required=True,
                          hint=f"python -m ipykernel install --user --name {kernel}"))
    git = _tool("git", ["--version"])
    facts.append(Fact(name="git", value=git.value, ok=git.value != "not found", required=True,
                      hint="install git (the notebook and test repos are cloned with it)"
                      if git.value == "not found" else ""))
    import importlib.util

    from gpuflow.test import PLUGINS

    absent = [dist for module, dist in PLUGINS.items() if importlib.util.find_spec(module) is None]
    facts.append(Fact(name="pytest plugins", value=", ".join(f"{d} missing" for d in absent) or
                      ", ".join(f"{d} {_version(d)}" for d in PLUGINS.values()), ok=not absent, required=True,
                      hint=f"pip install {' '.join(absent)}" if absent else ""))
    existing = next(p for p in [out, *out.parents] if p.exists())
    ok = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
    facts.append(Fact(name="out dir", value=f"{out} ({'writable' if ok else 'NOT writable'})", ok=ok, required=True,
                      hint="" if ok else (_owner_hint(existing, os.getuid()) or f"{existing} is read-only")
                      + "; pass --out to a writable directory"))
    return facts


def user_facts(workspace: Path) -> list[Fact]:
    uid, gid = os.getuid(), os.getgid()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # an arbitrary UID without a passwd entry (OpenShift)
        user = "?"
    home = Path(os.environ.get("HOME") or "/")
    home_ok, ws_ok = _writable(home), _writable(workspace)
    return [
        Fact(name="user", value=f"{user} uid={uid} gid={gid}",
             hint="no passwd entry: set HOME to a writable directory" if user == "?" else ""),
        Fact(name="HOME", value=f"{home} ({'writable' if home_ok else 'NOT writable'})", ok=home_ok,
             required=True, hint="" if home_ok else (_owner_hint(home, uid) or f"{home} is read-only")
             + "; set HOME to a writable directory (Jupyter writes runtime files there)"),
        Fact(name="workspace", value=f"{workspace} ({'writable' if ws_ok else 'NOT writable'})", ok=ws_ok,
             required=True, hint="" if ws_ok else (_owner_hint(workspace, uid) or "read-only")
             + f"; in Kubernetes set the pod's securityContext.fsGroup to {gid}; on NFS with root squash, "
               f"export the share with all_squash,anonuid={uid},anongid={gid}"),
    ]


def system_facts() -> list[Fact]:
    facts = []
    try:
        shm = shutil.disk_usage("/dev/shm").total
        small = shm < 1 << 30
        facts.append(Fact(name="/dev/shm", value=f"{shm / 2**20:,.0f} MiB", ok=not small,
                          hint="mount an emptyDir {medium: Memory} at /dev/shm (Docker: --shm-size=8g)"
                          if small else ""))
    except OSError:
        facts.append(Fact(name="/dev/shm", value="absent", ok=False, hint="mount a memory volume at /dev/shm"))
    for label, res in (("memlock", resource.RLIMIT_MEMLOCK), ("stack", resource.RLIMIT_STACK)):
        soft, _hard = resource.getrlimit(res)
        shown = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 1024:,} KiB"
        low = label == "memlock" and soft != resource.RLIM_INFINITY and soft < 64 << 20
        facts.append(Fact(name=f"ulimit {label}", value=shown, ok=not low,
                          hint="pinned-memory transfers need more: `ulimit -l unlimited` (capability IPC_LOCK)"
                          if low else ""))
    return facts


def gpu_facts(gpu: dict[str, Any], require: bool) -> list[Fact]:
    if gpu.get("visible"):
        names = ", ".join(str(d.get("name")) for d in gpu.get("devices", [])) or f"{gpu.get('runtime_devices')} device(s)"
        return [Fact(name="gpu", value=f"{names}; driver {gpu.get('driver')}; CUDA {gpu.get('cuda_version')}")]
    checks = "; ".join(gpu.get("checks", []))
    return [Fact(name="gpu", value=f"none visible ({checks})", ok=False, required=require,
                 hint="request nvidia.com/gpu in the pod and use the NVIDIA runtime; "
                      "check CUDA_VISIBLE_DEVICES is not empty")]


def doctor(*, workspace: Path | None = None, gpu: bool = True, require_gpu: bool = False, kernel: str = "python3",
           out: Path | None = None) -> DoctorReport:
    """Gather every fact; never raises for a missing piece (that is a fact)."""
    from gpuflow.gpu import devices as _gpu

    gpu_info = _gpu.detect() if gpu else {}
    facts = python_facts() + package_facts() + kernel_facts() + user_facts(workspace or Path.cwd())
    facts += run_facts(kernel, (out or Path("gpuflow-out")).absolute())
    facts += system_facts() + (gpu_facts(gpu_info, require_gpu) if gpu else [])
    return DoctorReport(facts=facts, gpu=gpu_info)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the facts as JSON on stdout")
    p.add_argument("--workspace", type=Path, default=None, help="directory that must be writable (default: cwd)")
    p.add_argument("--gpu", choices=("auto", "require", "off"), default="auto",
                   help="require: exit 4 without a GPU; off: skip the GPU checks")
    p.add_argument("--kernel", default="python3", help="the kernel the notebooks run in")
    p.add_argument("--out", type=Path, default=Path("gpuflow-out"), help="where runs are written")


def _call(args: argparse.Namespace) -> DoctorReport:
    report = doctor(workspace=args.workspace, gpu=args.gpu != "off", require_gpu=args.gpu == "require",
                    kernel=args.kernel, out=args.out)
    if args.json:
        print(json.dumps({"facts": [asdict(f) for f in report.facts], "gpu": report.gpu,
                          "exit_code": report.exit_code}, indent=1, default=str))
    else:
        print(report.table())
    if args.gpu == "require" and not report.gpu.get("visible"):
        from gpuflow.gpu.devices import missing_line

        raise NoGPUError(missing_line(report.gpu))
    problems = [f.name for f in report.facts if f.required and not f.ok]
    if problems:
        raise ConfigError(f"required: {', '.join(problems)} (see the hints above)")
    return report


STEP = Step(
    name="doctor", description="Print the environment facts a GPU notebook step depends on.",
    add_arguments=add_arguments, call=_call,
    details=lambda report: {"warnings": [f.name for f in report.facts if not f.ok]},
)


def main(argv: Sequence[str] | None = None) -> int:
    return STEP.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
