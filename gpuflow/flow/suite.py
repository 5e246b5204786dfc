"""A whole notebook suite in one run: which notebooks run and which are
skipped (`gpuflow.flow.select`, `gpuflow.flow.requirements`), what each one
claims of the GPUs while it runs, and, with `--pack`, how they share the
GPUs by the memory they were measured to need (`gpuflow.flow.pack`,
`gpuflow.flow.history`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from gpuflow.core.log import log
from gpuflow.flow import config as cfgmod
from gpuflow.flow import history, pack, requirements, select
from gpuflow.flow.notebook import NotebookJob, NotebookResult
from gpuflow.flow.schedule import Claim, Slot
from gpuflow.report.model import Packed

MIB = 1 << 20


def history_key(cfg: cfgmod.FlowConfig, job: NotebookJob) -> tuple[str, str]:
    return history.key_for(cfg, job.notebook, job.rel)


def gpus_for(cfg: cfgmod.FlowConfig, facts: Mapping[str, Any]) -> str:
    """`gpus`, or with --pack and no `gpus`, every GPU the preflight saw
    (none visible: the notebooks run unpinned, one per slot, and it says so)."""
    if not cfg.pack or cfg.gpus.strip():
        return cfg.gpus
    if facts.get("visible") and facts.get("devices"):
        return "all"
    log.warning("--pack: no GPU visible; the notebooks run unpinned, one per slot")
    return ""


def select_jobs(cfg: cfgmod.FlowConfig, jobs: Sequence[NotebookJob], facts: Mapping[str, Any],
                slots: Sequence[Slot], repo_dir: Any) -> list[NotebookJob]:
    """Each job with its requirements and, when it does not run, why."""
    pinned = [s.gpu for s in slots if s.gpu is not None] or None
    devices = requirements.visible_devices(facts, pinned)
    out = []
    for job in jobs:
        meta = select.metadata(job.notebook)
        reason = select.skip_reason(job.notebook, job.rel, repo_dir, meta, cfg.run_type)
        req = requirements.for_notebook(cfg.requires, job.rel, job.stem, meta)
        if reason is None:
            reason = requirements.unmet(req, facts, devices)
        if reason is not None:
            log.info(f"{job.name}: skipped: {reason}")
        out.append(replace(job, skip=reason, requires=req))
    return out


def devices_of(facts: Mapping[str, Any], slots: Sequence[Slot]) -> list[pack.Device]:
    """The GPU slots whose memory the preflight recorded."""
    by_index = {str(d.get("index")): d for d in facts.get("devices") or [] if isinstance(d, dict)}
    found = []
    for slot in slots:
        memory = by_index.get(slot.gpu or "", {}).get("memory_mib")
        if slot.gpu is not None and isinstance(memory, int):
            found.append(pack.Device(gpu=slot.gpu, memory_bytes=memory * MIB))
    return found


def measured(cfg: cfgmod.FlowConfig, jobs: Sequence[NotebookJob]) -> list[pack.Item]:
    """Each job as the packing sees it: its name and what history says it used."""
    found = history.lookup_all(dict(history_key(cfg, job) for job in jobs))
    items = []
    for job in jobs:
        m = found.get(job.rel)
        items.append(pack.Item(name=job.name, device_peak_bytes=m.device_peak_bytes if m else None,
                               rmm_peak_bytes=m.rmm_peak_bytes if m else None,
                               duration_s=m.duration_s if m else None))
    return items


def plan_jobs(cfg: cfgmod.FlowConfig, jobs: Sequence[NotebookJob],
              devices: Sequence[pack.Device]) -> tuple[list[NotebookJob], list[pack.Group]]:
    """Place the packable jobs (one GPU, not skipped) on the devices; each
    gets its GPU and its share. Others are returned unchanged."""
    packable = [j for j in jobs if j.skip is None and j.requires.gpus <= 1]
    groups = pack.plan(measured(cfg, packable), devices)
    where = {p.name: (g.gpu, p) for g in groups for p in g.notebooks}
    out = []
    for job in jobs:
        if job.name not in where:
            out.append(job)
            continue
        gpu, placed = where[job.name]
        out.append(replace(job, gpu=gpu, need=placed.need_bytes, share=placed.pool_cap_bytes))
    return out, groups


def claim(job: NotebookJob, slots: Sequence[Slot]) -> Claim:
    """A packed job claims its share of its GPU; a job that needs N GPUs holds
    N pinned slots; any other holds one slot whole."""
    pinned = any(s.gpu is not None for s in slots)
    if job.gpu is not None and job.retried is None:
        return Claim(memory=job.need, slot=f"gpu{job.gpu}")
    return Claim(width=job.requires.width if pinned else 1)


def again(job: NotebookJob, result: NotebookResult) -> NotebookJob | None:
    """A packed notebook that ran out of memory in its share runs once more,
    alone on a whole GPU, without a cap."""
    if job.share is None or job.retried is not None or result.exit_code == 0 or not pack.out_of_memory(result.error):
        return None
    why = f"out of memory in its {job.share / (1 << 30):.1f} GiB share on GPU {job.gpu}; ran again alone"
    log.warning(f"{job.name}: {why}")
    return replace(job, share=None, need=None, retried=why)


def packed_report(jobs: Sequence[NotebookJob], results: Sequence[NotebookResult]) -> dict[str, Packed]:
    """What the summary shows of the packing: each packed notebook's GPU and share, and its retry."""
    retried = {r.name: r.retried for r in results if r.retried}
    return {job.name: Packed(gpu=job.gpu, share_bytes=job.share, retried=retried.get(job.name))
            for job in jobs if job.gpu is not None}


def matrix(planned: Mapping[str, Any]) -> list[str]:
    """The plan as a Tekton matrix: one string per GPU, its notebooks
    comma-separated. The notebooks that are skipped or not packed (several
    GPUs) join the first group, so that its run lists them with their reason."""
    groups = [list(g["notebooks"]) for g in planned.get("groups") or []]
    rest = [s["notebook"] for s in planned.get("skipped") or []] + list(planned.get("not_packed") or [])
    if rest:
        groups = [groups[0] + rest, *groups[1:]] if groups else [rest]
    return [",".join(g) for g in groups]


def plan_json(jobs: Sequence[NotebookJob], groups: Sequence[pack.Group]) -> dict[str, Any]:
    """`gpuflow run --plan`: one group per GPU, and the notebooks not packed."""
    rel = {j.name: j.rel for j in jobs}
    return {
        "headroom": pack.HEADROOM, "context_bytes": pack.CONTEXT_BYTES, "reserve_bytes": pack.RESERVE_BYTES,
        "groups": [{"gpu": g.gpu, "memory_bytes": g.memory_bytes, "estimate_s": g.estimate_s,
                    "notebooks": [rel[p.name] for p in g.notebooks],
                    "placements": [{**asdict(p), "notebook": rel[p.name], "pool_cap_bytes": p.pool_cap_bytes}
                                   for p in g.notebooks]} for g in groups],
        "skipped": [{"notebook": j.rel, "reason": j.skip} for j in jobs if j.skip is not None],
        "not_packed": [j.rel for j in jobs if j.skip is None and j.name not in
                       {p.name for g in groups for p in g.notebooks}],
    }
