"""Rules Tekton's webhook and controller enforce that no schema can see, plus
gpuflow's own rules for its manifests. Each rule takes the loaded objects and
returns a list of messages; an empty list means the rule holds.

Sources: tektoncd/pipeline pkg/apis/pipeline/v1/*_validation.go,
pkg/workspace/validate.go (one PVC per TaskRun), and ../shared/STYLE.md rule 18.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PARAM_NAME = re.compile(r"^[_a-zA-Z][_a-zA-Z0-9.-]*$")
RESULT_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
PARAM_REF = re.compile(r"""\$\(params(?:\.([_a-zA-Z][_a-zA-Z0-9.-]*?)|\[['"]([^'"]+)['"]\])(\[\*\])?\)""")
WORKSPACE_REF = re.compile(r"\$\(workspaces\.([^.)]+)\.(path|bound|claim|volume)\)")
RESULT_REF = re.compile(r"\$\(results\.([^.)]+)\.path\)")
TASK_RESULT_REF = re.compile(r"\$\((tasks|finally)\.([^.)]+)\.results\.([^.)\[]+)(\[\*\])?\)")
TASK_STATUS_REF = re.compile(r"\$\(tasks\.(?:([^.)]+)\.)?status\)")
TEKTON_VAR = re.compile(r"\$\((params|workspaces|results|context|steps|tasks|finally)[.\[]")
RUNTIME_INSTALLS = ("pip install", "apt-get", "poetry install", "conda install", "curl ", "wget ")
SHELL_VAR = re.compile(r"\$\{?[A-Za-z_]\w*\}?")
GPU = "nvidia.com/gpu"
UID = 1001  # `rapids` in the RAPIDS image; `ubuntu` is 1000
ROOT_STEPS = {("gpuflow-init-workspace", "chown")}  # the one documented root step
# the steps that run notebooks, each asking for one GPU: one notebook per TaskRun
# (the per-step Pipeline), or one packed group per TaskRun (the packed Pipeline)
GPU_STEPS = {"gpuflow-execute/execute", "gpuflow-run-group/run"}
# the one array result: the packing's groups, which the packed Pipeline's matrix fans out over
ARRAY_RESULTS = {("gpuflow-plan", "groups")}
WHOLE_ARRAY_RESULT = re.compile(r"^\$\(tasks\.[^.)]+\.results\.[^.)\[]+\[\*\]\)$")
# A run's storage mode: "parallel" is written for `coschedule: disabled`, where
# no affinity assistant runs and a TaskRun may bind several claims.
STORAGE_MODE = "gpuflow/storage-mode"
MAX_MATRIX = 256
MAX_RESULTS = 8  # several tiny strings; the 4096-byte budget is checked at run time too


@dataclass
class Manifests:
    """Every object, indexed the way the rules look things up."""

    docs: list[Doc]
    tasks: dict[str, Doc] = field(default_factory=dict)
    pipelines: dict[str, Doc] = field(default_factory=dict)
    runs: list[Doc] = field(default_factory=list)

    def __post_init__(self) -> None:
        for doc in self.all():
            kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
            if kind == "Task":
                self.tasks[name] = doc
            elif kind == "Pipeline":
                self.pipelines[name] = doc
            elif kind in ("PipelineRun", "TaskRun"):
                self.runs.append(doc)

    def all(self) -> Iterator[Doc]:
        for doc in self.docs:
            yield doc
            if doc.get("kind") == "TriggerTemplate":
                yield from (doc.get("spec") or {}).get("resourcetemplates") or []

    def task_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(label, Task spec) for named Tasks and every inline taskSpec."""
        for name, task in self.tasks.items():
            yield name, task.get("spec") or {}
        for label, pspec in self.pipeline_specs():
            for pt in _pipeline_tasks(pspec):
                if isinstance(pt.get("taskSpec"), dict):
                    yield f"{label}/{pt.get('name')}", pt["taskSpec"]
        for run in self.runs:
            if isinstance((run.get("spec") or {}).get("taskSpec"), dict):
                yield _label(run), run["spec"]["taskSpec"]

    def pipeline_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, pipeline in self.pipelines.items():
            yield name, pipeline.get("spec") or {}
        for run in self.runs:
            if isinstance((run.get("spec") or {}).get("pipelineSpec"), dict):
                yield _label(run), run["spec"]["pipelineSpec"]

    def resolve_task(self, pt: dict[str, Any]) -> dict[str, Any] | None:
        if isinstance(pt.get("taskSpec"), dict):
            return pt["taskSpec"]
        task = self.tasks.get((pt.get("taskRef") or {}).get("name"))
        return task.get("spec") or {} if task else None

    def resolve_pipeline(self, run: Doc) -> dict[str, Any] | None:
        spec = run.get("spec") or {}
        if isinstance(spec.get("pipelineSpec"), dict):
            return spec["pipelineSpec"]
        pipeline = self.pipelines.get((spec.get("pipelineRef") or {}).get("name"))
        return pipeline.get("spec") or {} if pipeline else None


def load(root: Path) -> Manifests:
    docs = []
    # kustomization.yaml tells kubectl what to apply; it is not an object on the cluster
    for path in sorted(p for p in root.rglob("*.yaml") if p.name != "kustomization.yaml"):
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return Manifests(docs)


def _label(doc: Doc) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name') or meta.get('generateName')}"


def _pipeline_tasks(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("tasks") or []), *(spec.get("finally") or [])]


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _steps(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in spec.get("steps") or [] if isinstance(s, dict)]


def merged_step(spec: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    """The step with stepTemplate applied the way Tekton does: step fields win,
    maps merge, env and volumeMounts merge by name."""
    return _merge(spec.get("stepTemplate") or {}, step)


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(over, list) and all(
            isinstance(i, dict) and "name" in i for i in [*base, *over]):
        by_name = {i["name"]: i for i in base}
        by_name.update({i["name"]: i for i in over})
        return list(by_name.values())
    return over


def _param_names(spec: dict[str, Any]) -> set[str]:
    return {p.get("name") for p in spec.get("params") or []}


def _param_refs(text: str) -> Iterator[str]:
    """Declared names referenced in `text` ($(params.obj.key) refers to obj)."""
    for m in PARAM_REF.finditer(text):
        yield m.group(2) or m.group(1).split(".")[0]


# ---------------------------------------------------------------- the rules

def names_are_dns1123(m: Manifests) -> list[str]:
    errors = []
    for doc in m.all():
        name = (doc.get("metadata") or {}).get("name")
        if doc.get("kind") in ("Task", "Pipeline") and not (name and DNS1123_LABEL.match(name)):
            errors.append(f"{_label(doc)}: name is not a DNS-1123 label")
    for label, spec in m.task_specs():
        names = [s.get("name") for s in _steps(spec)]
        errors += [f"{label}: step name {n!r} is not a DNS-1123 label"
                   for n in names if not (isinstance(n, str) and DNS1123_LABEL.match(n))]
        errors += [f"{label}: step name {n!r} used twice" for n in set(names) if names.count(n) > 1]
        errors += [f"{label}: param name {n!r} is invalid" for n in _param_names(spec)
                   if not (isinstance(n, str) and PARAM_NAME.match(n))]
        errors += [f"{label}: result name {r.get('name')!r} is invalid" for r in spec.get("results") or []
                   if not RESULT_NAME.match(str(r.get("name")))]
    for label, spec in m.pipeline_specs():
        names = [t.get("name") for t in _pipeline_tasks(spec)]
        errors += [f"{label}: task name {n!r} is not a DNS-1123 label"
                   for n in names if not (isinstance(n, str) and DNS1123_LABEL.match(n))]
        errors += [f"{label}: task name {n!r} used twice" for n in set(names) if names.count(n) > 1]
    return errors


def task_references_declared(m: Manifests) -> list[str]:
    """$(params.x), $(workspaces.x.*) and $(results.x.path) name declared things."""
    errors = []
    for label, spec in m.task_specs():
        params = _param_names(spec)
        workspaces = {w.get("name") for w in spec.get("workspaces") or []}
        results = {r.get("name") for r in spec.get("results") or []}
        for part in [spec.get("stepTemplate") or {}, *_steps(spec), *(spec.get("sidecars") or []),
                     {"volumes": spec.get("volumes")}]:
            for text in _strings(part):
                errors += [f"{label}: $(params.{p}) is not declared" for p in _param_refs(text) if p not in params]
                errors += [f"{label}: $(workspaces.{w}...) is not declared"
                           for w, _ in WORKSPACE_REF.findall(text) if w not in workspaces]
                errors += [f"{label}: $(results.{r}.path) is not declared"
                           for r in RESULT_REF.findall(text) if r not in results]
    return errors


def pipeline_references_declared(m: Manifests) -> list[str]:
    """$(params.x) and $(tasks.t.results.r) in a Pipeline name declared things,
    and statuses are read only in finally."""
    errors = []
    for label, spec in m.pipeline_specs():
        params = _param_names(spec)
        workspaces = {w.get("name") for w in spec.get("workspaces") or []}
        tasks = {t.get("name"): t for t in spec.get("tasks") or []}
        finals = {t.get("name"): t for t in spec.get("finally") or []}
        for section, pts in (("tasks", spec.get("tasks") or []), ("finally", spec.get("finally") or [])):
            for pt in pts:
                where = f"{label}/{pt.get('name')}"
                texts = list(_strings({k: pt.get(k) for k in ("params", "matrix", "when", "displayName")}))
                for text in texts:
                    errors += [f"{where}: $(params.{p}) is not a Pipeline param"
                               for p in _param_refs(text) if p not in params]
                    for scope, task, result, _ in TASK_RESULT_REF.findall(text):
                        errors += _result_ref_errors(m, where, tasks, task, result, scope)
                    if section == "tasks" and TASK_STATUS_REF.search(text):
                        errors.append(f"{where}: $(tasks...status) is allowed only in finally")
                for ws in pt.get("workspaces") or []:
                    if ws.get("workspace") not in workspaces:
                        errors.append(f"{where}: workspace {ws.get('workspace')!r} is not a Pipeline workspace")
        for res in spec.get("results") or []:
            for scope, task, result, _ in TASK_RESULT_REF.findall(str(res.get("value"))):
                pool = tasks if scope == "tasks" else finals
                errors += _result_ref_errors(m, f"{label}/results", pool, task, result, scope)
    return errors


def _result_ref_errors(m: Manifests, where: str, pool: dict[str, Any], task: str,
                       result: str, scope: str) -> list[str]:
    if task not in pool:
        return [f"{where}: $({scope}.{task}.results.{result}) names no such task"]
    spec = m.resolve_task(pool[task])
    if spec is not None and result not in {r.get("name") for r in spec.get("results") or []}:
        return [f"{where}: task {task!r} declares no result {result!r}"]
    return []


def script_xor_command(m: Manifests) -> list[str]:
    return [f"{label}/{s.get('name')}: script and command are both set"
            for label, spec in m.task_specs() for s in _steps(spec) if "script" in s and "command" in s]


def run_after_is_a_dag(m: Manifests) -> list[str]:
    errors = []
    for label, spec in m.pipeline_specs():
        tasks = {t.get("name"): t for t in spec.get("tasks") or []}
        edges: dict[str, set[str]] = {}
        for name, pt in tasks.items():
            deps = set(pt.get("runAfter") or [])
            errors += [f"{label}/{name}: runAfter {d!r} is not a task of this Pipeline" for d in deps if d not in tasks]
            deps |= {t for _, t, _, _ in TASK_RESULT_REF.findall(" ".join(_strings(pt.get("params"))))}
            edges[name] = deps & set(tasks)
        errors += [f"{label}/{f.get('name')}: finally tasks cannot use runAfter"
                   for f in spec.get("finally") or [] if f.get("runAfter")]
        if spec.get("finally") and not tasks:
            errors.append(f"{label}: finally needs at least one task")
        if graph_order(edges) is None:
            errors.append(f"{label}: runAfter/result references form a cycle")
    return errors


def graph_order(edges: dict[str, set[str]]) -> list[str] | None:
    """Tasks in an order that respects `edges` (task -> its dependencies), or
    None when there is a cycle."""
    order: list[str] = []
    done: set[str] = set()
    pending = dict(edges)
    while pending:
        ready = sorted(n for n, deps in pending.items() if deps <= done)
        if not ready:
            return None
        for n in ready:
            order.append(n)
            done.add(n)
            del pending[n]
    return order


def matrix_rules(m: Manifests) -> list[str]:
    errors = []
    for label, spec in m.pipeline_specs():
        arrays = {p.get("name") for p in spec.get("params") or [] if p.get("type") == "array"}
        for pt in _pipeline_tasks(spec):
            matrix = (pt.get("matrix") or {}).get("params") or []
            if not matrix:
                continue
            where = f"{label}/{pt.get('name')}"
            names = [p.get("name") for p in matrix]
            errors += [f"{where}: matrix param {n!r} twice" for n in set(names) if names.count(n) > 1]
            errors += [f"{where}: {n!r} is in both params and matrix"
                       for n in set(names) & {p.get("name") for p in pt.get("params") or []}]
            count = 1
            for p in matrix:
                value = p.get("value")
                if isinstance(value, str) and WHOLE_ARRAY_RESULT.match(value):
                    continue  # a whole array result: its length is known at run time only
                if not isinstance(value, list):
                    errors.append(f"{where}: matrix param {p.get('name')!r} must be a list")
                    continue
                refs = [PARAM_REF.fullmatch(v) for v in value if isinstance(v, str)]
                for ref in refs:
                    if ref and ref.group(3) and (ref.group(1) or ref.group(2)) not in arrays:
                        errors.append(f"{where}: matrix fans out over {ref.group(0)}, not an array param")
                if not any(r and r.group(3) for r in refs):
                    count *= len(value)
            if count > MAX_MATRIX:
                errors.append(f"{where}: {count} matrix combinations > {MAX_MATRIX}")
            task = m.resolve_task(pt)
            if task is not None:
                types = {p.get("name"): p.get("type", "string") for p in task.get("params") or []}
                errors += [f"{where}: matrix param {n!r} must feed a string Task param"
                           for n in names if types.get(n) != "string"]
    return errors


def required_params_supplied(m: Manifests) -> list[str]:
    errors = []
    for label, spec in m.pipeline_specs():
        for pt in _pipeline_tasks(spec):
            task = m.resolve_task(pt)
            if task is None:
                ref = (pt.get("taskRef") or {}).get("name")
                errors.append(f"{label}/{pt.get('name')}: taskRef {ref!r} is not among our Tasks")
                continue
            given = {p.get("name") for p in pt.get("params") or []}
            given |= {p.get("name") for p in (pt.get("matrix") or {}).get("params") or []}
            errors += [f"{label}/{pt.get('name')}: required param {p.get('name')!r} not supplied"
                       for p in task.get("params") or [] if "default" not in p and p.get("name") not in given]
            declared = _param_names(task)
            errors += [f"{label}/{pt.get('name')}: param {n!r} is not a param of the Task"
                       for n in given - declared]
            task_ws = {w.get("name"): w for w in task.get("workspaces") or []}
            mapped = {w.get("name") for w in pt.get("workspaces") or []}
            errors += [f"{label}/{pt.get('name')}: workspace {n!r} of the Task is not mapped"
                       for n, w in task_ws.items() if not w.get("optional") and n not in mapped]
    for run in m.runs:
        pipeline = m.resolve_pipeline(run) if run.get("kind") == "PipelineRun" else None
        if pipeline is None:
            continue
        given = {p.get("name") for p in (run.get("spec") or {}).get("params") or []}
        errors += [f"{_label(run)}: required Pipeline param {p.get('name')!r} not supplied"
                   for p in pipeline.get("params") or [] if "default" not in p and p.get("name") not in given]
        bound = {w.get("name") for w in (run.get("spec") or {}).get("workspaces") or []}
        errors += [f"{_label(run)}: Pipeline workspace {w.get('name')!r} not bound"
                   for w in pipeline.get("workspaces") or [] if not w.get("optional") and w.get("name") not in bound]
    return errors


def one_pvc_per_task(m: Manifests) -> list[str]:
    """Tekton's affinity assistant fails a TaskRun that binds two PVC-backed
    workspaces: "more than one PersistentVolumeClaim is bound". Runs written
    for `coschedule: disabled` have no affinity assistant."""
    errors = []
    for run in m.runs:
        pipeline = m.resolve_pipeline(run) if run.get("kind") == "PipelineRun" else None
        if pipeline is None or ((run.get("metadata") or {}).get("annotations") or {}).get(STORAGE_MODE) == "parallel":
            continue
        pvc_backed = {w.get("name"): (w.get("persistentVolumeClaim") or {}).get("claimName") or w.get("name")
                      for w in (run.get("spec") or {}).get("workspaces") or []
                      if "persistentVolumeClaim" in w or "volumeClaimTemplate" in w}
        for pt in _pipeline_tasks(pipeline):
            claims = {pvc_backed[w.get("workspace")] for w in pt.get("workspaces") or []
                      if w.get("workspace") in pvc_backed}
            if len(claims) > 1:
                errors.append(f"{_label(run)}/{pt.get('name')}: binds {len(claims)} PVCs {sorted(claims)}")
    return errors


def gpu_on_exactly_one_step(m: Manifests) -> list[str]:
    """A GPU is asked for by the notebook step only, as a literal: the pod's
    request is the sum over its containers, stepTemplate copies it to every
    step, and task-level computeResources splits requests across steps."""
    errors, holders = [], []
    for label, spec in m.task_specs():
        template = (spec.get("stepTemplate") or {}).get("computeResources") or {}
        if any(GPU in (template.get(k) or {}) for k in ("requests", "limits")):
            errors.append(f"{label}: {GPU} in stepTemplate")
        for step in _steps(spec):
            res = step.get("computeResources") or {}
            for k in ("requests", "limits"):
                value = (res.get(k) or {}).get(GPU)
                if value is None:
                    continue
                holders.append(f"{label}/{step.get('name')}")
                if not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
                    errors.append(f"{label}/{step.get('name')}: {GPU} {k} must be a whole literal, not {value!r}")
            if any("$(" in s for s in _strings(res)):
                errors.append(f"{label}/{step.get('name')}: a variable in computeResources (must be literal)")
    for run in m.runs:
        spec = run.get("spec") or {}
        for trs in [spec, *(spec.get("taskRunSpecs") or [])]:
            if GPU in str(trs.get("computeResources") or ""):
                errors.append(f"{_label(run)}: task-level {GPU} computeResources")
    if set(holders) != GPU_STEPS:
        errors.append(f"{GPU} must be asked for by exactly one step of the notebook Tasks "
                      f"({', '.join(sorted(GPU_STEPS))}), found {sorted(set(holders))}")
    return errors


def results_stay_tiny(m: Manifests) -> list[str]:
    """Results ride in the termination message (4096 bytes per TaskRun), so
    Tasks declare a few string results; sizes are asserted at run time."""
    errors = []
    for label, spec in m.task_specs():
        results = spec.get("results") or []
        if len(results) > MAX_RESULTS:
            errors.append(f"{label}: {len(results)} results; keep under {MAX_RESULTS}")
        errors += [f"{label}: result {r.get('name')!r} is not a string" for r in results
                   if r.get("type", "string") != "string"
                   and not (r.get("type") == "array" and (label.split("/")[0], r.get("name")) in ARRAY_RESULTS)]
    return errors


def scripts_take_values_from_env(m: Manifests) -> list[str]:
    """Tekton pastes variables into script text unescaped; values go through
    env and the script reads quoted shell variables (STYLE rule 18)."""
    errors = []
    for label, spec in m.task_specs():
        for step in _steps(spec):
            script = step.get("script") or ""
            where = f"{label}/{step.get('name')}"
            if TEKTON_VAR.search(script):
                errors.append(f"{where}: Tekton variable inside script text: {TEKTON_VAR.search(script).group(0)}")
            if script and not script.startswith("#!/bin/sh\nset -eu\n"):
                errors.append(f"{where}: script must start with '#!/bin/sh' and 'set -eu'")
            if (label.split("/")[0], step.get("name")) not in ROOT_STEPS and script.count("python -m gpuflow.") != 1:
                errors.append(f"{where}: script must make exactly one `python -m gpuflow.<step>` call")
            errors += [f"{where}: installs at run time ({w})" for w in RUNTIME_INSTALLS if w in script]
            errors += [f"{where}: shell variable {v.group(0)} must be written \"${{NAME}}\""
                       for v in SHELL_VAR.finditer(script)
                       if not re.fullmatch(r"\$\{\w+\}", v.group(0))
                       or script[v.start() - 1:v.start()] != '"' or script[v.end():v.end() + 1] != '"']
    return errors


def runs_as_rapids(m: Manifests) -> list[str]:
    """Every step runs as UID 1001 (rapids), non-root, no capabilities; only
    the documented init step is root. The existing Tasks used 1000 (ubuntu)."""
    errors = []
    for label, spec in m.task_specs():
        for step in _steps(spec):
            where = f"{label}/{step.get('name')}"
            ctx = merged_step(spec, step).get("securityContext") or {}
            if (label.split("/")[0], step.get("name")) in ROOT_STEPS:
                if ctx.get("runAsUser") != 0 or ctx.get("allowPrivilegeEscalation") is not False:
                    errors.append(f"{where}: the init step runs as root without privilege escalation")
                continue
            if ctx.get("runAsUser") != UID:
                errors.append(f"{where}: runAsUser is {ctx.get('runAsUser')!r}, not {UID} (rapids)")
            if ctx.get("runAsNonRoot") is not True:
                errors.append(f"{where}: runAsNonRoot is not true")
            if ctx.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{where}: allowPrivilegeEscalation is not false")
            if (ctx.get("capabilities") or {}).get("drop") != ["ALL"] or (ctx.get("capabilities") or {}).get("add"):
                errors.append(f"{where}: capabilities must drop ALL and add none")
            if (ctx.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                errors.append(f"{where}: seccompProfile is not RuntimeDefault")
    for run in m.runs:
        pod = ((run.get("spec") or {}).get("taskRunTemplate") or {}).get("podTemplate") or {}
        fs_group = (pod.get("securityContext") or {}).get("fsGroup")
        if fs_group != UID:
            errors.append(f"{_label(run)}: podTemplate.securityContext.fsGroup is {fs_group!r}, not {UID}")
    return errors


def summary_reports_failures(m: Manifests) -> list[str]:
    """The summary runs in finally and is handed $(tasks.status), which its
    step passes to gpuflow.summary: a hard-coded "COMPLETED" cannot happen."""
    errors = []
    for label, spec in m.pipeline_specs():
        handed = [(pt, p.get("name")) for pt in spec.get("finally") or []
                  for p in pt.get("params") or [] if "$(tasks.status)" in str(p.get("value"))]
        if not handed:
            errors.append(f"{label}: no finally task receives $(tasks.status)")
            continue
        for pt, param in handed:
            task = m.resolve_task(pt) or {}
            used = [s for s in _steps(task)
                    for env in merged_step(task, s).get("env") or []
                    if re.search(rf"\$\(params\.{re.escape(param)}\)", str(env.get("value")))
                    and f'"${{{env.get("name")}}}"' in (s.get("script") or "")]
            if not used:
                errors.append(f"{label}/{pt.get('name')}: param {param!r} ($(tasks.status)) never reaches a script")
    return errors


def timeouts_explicit(m: Manifests) -> list[str]:
    """Tekton's default is 60 minutes per PipelineRun; notebooks need more."""
    errors = []
    for run in m.runs:
        if run.get("kind") != "PipelineRun":
            continue
        timeouts = (run.get("spec") or {}).get("timeouts") or {}
        if "pipeline" not in timeouts:
            errors.append(f"{_label(run)}: timeouts.pipeline not set (default 60m)")
            continue
        bad = [k for k, v in timeouts.items() if not GO_DURATION.match(str(v))]
        errors += [f"{_label(run)}: timeouts.{k} is not a duration" for k in bad]
        if not bad and _seconds(timeouts.get("tasks", "0s")) + _seconds(timeouts.get("finally", "0s")) > _seconds(
                timeouts["pipeline"]) > 0:
            errors.append(f"{_label(run)}: timeouts.tasks + finally exceed timeouts.pipeline")
    for label, spec in m.pipeline_specs():
        errors += [f"{label}/{pt.get('name')}: timeout {pt['timeout']!r} is not a duration"
                   for pt in _pipeline_tasks(spec) if "timeout" in pt and not GO_DURATION.match(str(pt["timeout"]))]
    return errors


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ns|us|µs|ms|s|m|h)", duration))


def on_error_values(m: Manifests) -> list[str]:
    errors = []
    for label, spec in m.task_specs():
        errors += [f"{label}/{s.get('name')}: onError {s['onError']!r}" for s in _steps(spec)
                   if "onError" in s and s["onError"] not in ("continue", "stopAndFail")]
    for label, spec in m.pipeline_specs():
        for pt in _pipeline_tasks(spec):
            if "onError" in pt and pt["onError"] not in ("continue", "stopAndFail"):
                errors.append(f"{label}/{pt.get('name')}: onError {pt['onError']!r}")
            if pt.get("onError") == "continue" and pt.get("retries"):
                errors.append(f"{label}/{pt.get('name')}: onError continue with retries")
    return errors


def api_is_v1(m: Manifests) -> list[str]:
    return [f"{_label(d)}: {d.get('apiVersion')} (use tekton.dev/v1)" for d in m.all()
            if str(d.get("apiVersion")).startswith("tekton.dev/")
            and d.get("apiVersion") != "tekton.dev/v1" and d.get("kind") != "StepAction"]


def triggers_rules(m: Manifests) -> list[str]:
    errors = []
    for doc in m.docs:
        kind, spec = doc.get("kind"), doc.get("spec") or {}
        if kind == "TriggerTemplate":
            declared = _param_names(spec)
            errors += [f"{_label(doc)}: $(tt.params.{p}) is not declared"
                       for text in _strings(spec.get("resourcetemplates"))
                       for p in re.findall(r"\$\(tt\.params\.([_a-zA-Z][_a-zA-Z0-9.-]*)\)", text) if p not in declared]
        if kind == "EventListener":
            if len((doc.get("metadata") or {}).get("name", "")) > 60:
                errors.append(f"{_label(doc)}: name longer than 60 characters")
            for t in spec.get("triggers") or []:
                errors += _trigger_errors(m, f"{_label(doc)}/{t.get('name')}", t)
    return errors


def _trigger_errors(m: Manifests, where: str, trigger: dict[str, Any]) -> list[str]:
    """The trigger's template and bindings exist, and the bindings fill the
    template's params without a default and nothing else."""
    if not (trigger.get("template") or trigger.get("triggerRef")):
        return [f"{where}: needs template or triggerRef"]
    named = {(d.get("kind"), (d.get("metadata") or {}).get("name")): d.get("spec") or {} for d in m.docs}
    template = named.get(("TriggerTemplate", (trigger.get("template") or {}).get("ref")))
    if template is None:
        return [f"{where}: template {(trigger.get('template') or {}).get('ref')!r} is not among our manifests"]
    bound: set[str] = set()
    errors = []
    for b in trigger.get("bindings") or []:
        if "ref" in b:
            binding = named.get((b.get("kind", "TriggerBinding"), b["ref"]))
            if binding is None:
                errors.append(f"{where}: binding {b['ref']!r} is not among our manifests")
                continue
            bound |= _param_names(binding)
        else:
            bound.add(b.get("name"))
    declared = _param_names(template)
    errors += [f"{where}: binding param {n!r} is not a TriggerTemplate param" for n in bound - declared]
    errors += [f"{where}: TriggerTemplate param {p.get('name')!r} is never bound" for p in template.get("params") or []
               if "default" not in p and p.get("name") not in bound]
    return errors


RULES: dict[str, Callable[[Manifests], list[str]]] = {
    f.__name__: f for f in (
        names_are_dns1123, task_references_declared, pipeline_references_declared, script_xor_command,
        run_after_is_a_dag, matrix_rules, required_params_supplied, one_pvc_per_task,
        gpu_on_exactly_one_step, results_stay_tiny, scripts_take_values_from_env, runs_as_rapids,
        summary_reports_failures, timeouts_explicit, on_error_values, api_is_v1, triggers_rules,
    )
}
