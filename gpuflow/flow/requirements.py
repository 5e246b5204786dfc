"""What a notebook needs to run (`gpus`, `gpu_memory`, `cuda`,
`compute_capability`), declared in its `gpuflow.requires` metadata or per
notebook in the config, and checked against the facts the preflight recorded
(`gpuflow.gpu.devices.detect`): the runner never initialises CUDA itself.

An unmet requirement skips the notebook with a reason such as
`needs 2 GPUs; 1 visible`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from gpuflow._embedded.kernel_guard import parse_size
from gpuflow.core.errors import ConfigError

KEYS = ("gpus", "gpu_memory", "cuda", "compute_capability")
MIB = 1 << 20


@dataclass(frozen=True, kw_only=True)
class Requires:
    gpus: int = 0  # 0: no GPU needed (a notebook that needs one says gpus = 1)
    gpu_memory: int | None = None  # bytes, on each GPU it uses
    cuda: str | None = None  # a version specifier: ">=12.4"
    compute_capability: str | None = None  # ">=8.0"

    @property
    def width(self) -> int:
        """How many GPU slots the notebook holds while it runs."""
        return max(1, self.gpus)


def parse(raw: Mapping[str, Any], where: str) -> Requires:
    """A `requires` table, checked; ConfigError names the bad key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: `requires` must be a table, not {raw!r}")
    for key in raw:
        if key not in KEYS:
            raise ConfigError(f"{where}: unknown requirement {key!r} (one of {', '.join(KEYS)})")
    gpus = raw.get("gpus", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ConfigError(f"{where}: `requires.gpus` must be a whole number, not {gpus!r}")
    memory = raw.get("gpu_memory")
    try:
        size = parse_size(memory) if memory is not None and not str(memory).strip().endswith("%") else None
    except ValueError as exc:
        raise ConfigError(f"{where}: `requires.gpu_memory`: {exc}") from None
    if memory is not None and size is None:
        raise ConfigError(f"{where}: `requires.gpu_memory` must be a size such as 40GiB, not {memory!r}")
    specs = {}
    for key in ("cuda", "compute_capability"):
        value = raw.get(key)
        if value is None:
            continue
        try:
            SpecifierSet(_spec(str(value)))
        except InvalidSpecifier:
            raise ConfigError(f"{where}: `requires.{key}` must be a version specifier such as "
                              f"'>=12.4', not {value!r}") from None
        specs[key] = _spec(str(value))
    # a memory or CUDA requirement implies a GPU
    implied = 1 if (size or specs) and not gpus else gpus
    return Requires(gpus=implied, gpu_memory=size, cuda=specs.get("cuda"),
                    compute_capability=specs.get("compute_capability"))


def _spec(text: str) -> str:
    # a bare version means "at least": cuda = "12.4" reads as >=12.4
    text = text.strip()
    return f">={text}" if text[:1].isdigit() else text


def for_notebook(configured: Mapping[str, Any], rel: str, stem: str, meta: Mapping[str, Any]) -> Requires:
    """The notebook's metadata `requires`, overridden key by key by the
    config's entry for it (keyed by path or stem): the operator has the last word."""
    own = meta.get("requires") or {}
    if not isinstance(own, Mapping):
        raise ConfigError(f"{rel}: metadata `gpuflow.requires` must be a table, not {own!r}")
    entry: Any = next((configured[k] for k in (rel, stem) if k in configured), {})
    if not isinstance(entry, Mapping):
        raise ConfigError(f"config `requires.{rel}` must be a table, not {entry!r}")
    return parse({**own, **entry}, rel)


def visible_devices(facts: Mapping[str, Any], pinned: Sequence[str] | None) -> list[dict[str, Any]]:
    """The devices a notebook can get: those pinned by `gpus`, else every one
    the preflight saw (none when it saw no usable GPU)."""
    if not facts.get("visible"):
        return []
    devices = [d for d in facts.get("devices") or [] if isinstance(d, dict)]
    if pinned is not None:
        by_index = {str(d.get("index")): d for d in devices}
        return [by_index.get(i, {"index": i}) for i in pinned]
    if not devices and isinstance(facts.get("runtime_devices"), int):
        return [{"index": i} for i in range(facts["runtime_devices"])]
    return devices


def cuda_version(facts: Mapping[str, Any]) -> str | None:
    """The driver's CUDA version from nvidia-smi, else the runtime's (12040 -> 12.4)."""
    if isinstance(facts.get("cuda_version"), str):
        return str(facts["cuda_version"])
    runtime = facts.get("runtime_version")
    if isinstance(runtime, int) and runtime > 0:
        return f"{runtime // 1000}.{runtime % 1000 // 10}"
    return None


def unmet(req: Requires, facts: Mapping[str, Any], devices: Sequence[Mapping[str, Any]]) -> str | None:
    """Why `req` cannot be met on these devices, or None when it can."""
    if req.gpus == 0:
        return None
    if len(devices) < req.gpus:
        return f"needs {req.gpus} GPU{'s' if req.gpus > 1 else ''}; {len(devices)} visible"
    if req.gpu_memory is not None:
        known = [d.get("memory_mib") for d in devices]
        if not all(isinstance(m, int) for m in known):
            return f"needs {_gib(req.gpu_memory)} per GPU; the preflight did not record the GPUs' memory"
        fits = sorted((m * MIB for m in known if isinstance(m, int)), reverse=True)[:req.gpus]
        if fits[-1] < req.gpu_memory:
            return f"needs {_gib(req.gpu_memory)} per GPU; {_gib(fits[-1])} visible"
    if req.cuda is not None:
        found = cuda_version(facts)
        if not _satisfies(req.cuda, found):
            return f"needs CUDA {req.cuda}; {found or 'unknown'} here"
    if req.compute_capability is not None:
        caps = [d.get("compute_capability") for d in devices]
        if not all(isinstance(c, str) for c in caps):
            return (f"needs compute capability {req.compute_capability}; "
                    "the preflight did not record the GPUs' compute capability")
        ok = [c for c in caps if isinstance(c, str) and _satisfies(req.compute_capability, c)]
        if len(ok) < req.gpus:
            return f"needs compute capability {req.compute_capability}; {', '.join(map(str, caps))} here"
    return None


def _satisfies(spec: str, found: str | None) -> bool:
    if found is None:
        return False
    try:
        return Version(found) in SpecifierSet(spec)
    except InvalidVersion:
        return False


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"
