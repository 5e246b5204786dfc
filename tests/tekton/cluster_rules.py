"""What a real cluster does that neither the CRD schemas nor the webhook see.

Each rule takes the loaded manifests and returns messages; an empty list
means the rule holds. They follow Tekton Pipelines v1.15.0 (the affinity
assistant and its PVC clean-up in pkg/reconciler/pipelinerun/affinity_assistant.go,
how a TaskRun's timeout is chosen in pkg/reconciler/pipelinerun/pipelinerun.go,
the security context of the containers Tekton injects in
pkg/pod/security_context_config.go), the Pod Security Standards' "restricted"
level, and the NVIDIA device plugin, which hands a pod its GPU through the
container's environment.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import tekton_rules as rules
from tekton_rules import Doc, Manifests

# Each PipelineRun says how it expects to be scheduled: its storage mode, how
# many GPUs it gets at once, and how long its slowest notebook runs on one.
MODE = rules.STORAGE_MODE
GPUS = "gpuflow/gpus"
NOTEBOOK_TIME = "gpuflow/notebook-time"
MODES = {"one-node": "workspaces", "parallel": "disabled"}  # mode -> the `coschedule` flag it is written for
AUTO_CLEANUP = "tekton.dev/auto-cleanup-pvc"
DEFAULT_TIMEOUT_S = 3600.0  # Tekton's default-timeout-minutes
DEVICE_ENV = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
ARTIFACTS = "artifacts"
LASTING = ("persistentVolumeClaim", "csi")  # bindings that outlive the run
NO_INSTALL = "--no-install"
# What Tekton gives the containers it injects (prepare, place-scripts) when
# the cluster sets `set-security-context: "true"`; without it they get none.
INJECTED_CONTEXT = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                    "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
INJECTED = ("prepare", "place-scripts")
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _label(doc: Doc) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name') or meta.get('generateName')}"


def _pipeline_runs(m: Manifests) -> Iterator[tuple[str, Doc, dict[str, Any], dict[str, Any]]]:
    """(label, run, run spec, Pipeline spec) of every PipelineRun whose Pipeline is ours."""
    for run in m.runs:
        pipeline = m.resolve_pipeline(run) if run.get("kind") == "PipelineRun" else None
        if pipeline is not None:
            yield _label(run), run, run.get("spec") or {}, pipeline


def _annotations(run: Doc) -> dict[str, str]:
    return (run.get("metadata") or {}).get("annotations") or {}


def _run_params(spec: dict[str, Any], pipeline: dict[str, Any]) -> dict[str, Any]:
    values = {p.get("name"): p.get("default") for p in pipeline.get("params") or [] if "default" in p}
    values.update({p.get("name"): p.get("value") for p in spec.get("params") or []})
    return values


def _resolve(text: Any, params: dict[str, Any]) -> Any:
    """`$(params.x)` or `$(params.x[*])` as a whole value -> its value; other text as is."""
    m = rules.PARAM_REF.fullmatch(str(text))
    return params.get(m.group(2) or m.group(1).split(".")[0], text) if m else text


def _when_holds(pt: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether the task's `when` lets it run with these params (in/notin only)."""
    for cond in pt.get("when") or []:
        value = _resolve(cond.get("input"), params)
        wanted = [str(_resolve(v, params)) for v in cond.get("values") or []]
        if (str(value) in wanted) != (cond.get("operator") == "in"):
            return False
    return True


def _seconds(value: Any) -> float | None:
    return rules._seconds(str(value)) if value is not None and rules.GO_DURATION.match(str(value)) else None


def _hm(seconds: float) -> str:
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def _explicit_timeout(spec: dict[str, Any], pt: dict[str, Any]) -> float | None:
    """The pipeline task's own timeout: the run's taskRunSpecs entry wins over
    the Pipeline's, as in Tekton's TaskRun creation."""
    for trs in spec.get("taskRunSpecs") or []:
        if trs.get("pipelineTaskName") == pt.get("name") and "timeout" in trs:
            return _seconds(trs["timeout"])
    return _seconds(pt.get("timeout"))


def _run_timeouts(spec: dict[str, Any]) -> tuple[float, float]:
    """timeouts.tasks and timeouts.finally, falling back as Tekton does."""
    t = spec.get("timeouts") or {}
    whole = _seconds(t.get("pipeline")) or DEFAULT_TIMEOUT_S
    return _seconds(t.get("tasks")) or whole, _seconds(t.get("finally")) or whole


def _requests_gpu(task: dict[str, Any]) -> bool:
    return any(rules.GPU in ((s.get("computeResources") or {}).get(k) or {})
               for s in rules._steps(task) for k in ("requests", "limits"))


def _matrix_size(pt: dict[str, Any], params: dict[str, Any]) -> int:
    size = 1
    for p in (pt.get("matrix") or {}).get("params") or []:
        if isinstance(p.get("value"), str):
            # a whole array result: gpuflow-plan's groups, one per GPU it was given, so
            # every branch has a GPU of its own and none waits for a turn
            continue
        items: list[Any] = []
        for item in p.get("value") or []:
            value = _resolve(item, params)
            items += value if isinstance(value, list) else [value]
        size *= len(items)
    return size


def _deps(pt: dict[str, Any]) -> set[str]:
    refs = rules.TASK_RESULT_REF.findall(" ".join(rules._strings(pt.get("params"))))
    return set(pt.get("runAfter") or []) | {t for scope, t, _, _ in refs if scope == "tasks"}


def _script_steps(task: dict[str, Any], module: str) -> list[dict[str, Any]]:
    return [rules.merged_step(task, s) for s in rules._steps(task) if f"python -m gpuflow.{module}" in (s.get("script") or "")]


def _env_for(step: dict[str, Any], value: str) -> str | None:
    """The env var of `step` whose value is exactly `value`."""
    return next((e.get("name") for e in step.get("env") or [] if e.get("value") == value), None)


# ---------------------------------------------------------------- the rules

def no_device_selection_env(m: Manifests) -> list[str]:
    """The device plugin puts the GPU it allocated in the container's env and
    the kubelet appends the pod's own env after it: a step that sets
    NVIDIA_VISIBLE_DEVICES=all sees every GPU on the node, and CUDA then picks
    device 0 for every notebook pod there."""
    errors = []
    for label, spec in m.task_specs():
        for c in [*rules._steps(spec), *(spec.get("sidecars") or [])]:
            env = rules.merged_step(spec, c).get("env") or []
            errors += [f"{label}/{c.get('name')}: sets {e.get('name')}; leave GPU selection to the device plugin"
                       for e in env if e.get("name") in DEVICE_ENV]
    for label, _run, spec, _p in _pipeline_runs(m):
        pods = [(spec.get("taskRunTemplate") or {}).get("podTemplate") or {},
                *((t.get("podTemplate") or {}) for t in spec.get("taskRunSpecs") or [])]
        errors += [f"{label}: podTemplate env sets {e.get('name')}; leave GPU selection to the device plugin"
                   for pod in pods for e in pod.get("env") or [] if e.get("name") in DEVICE_ENV]
    return errors


def storage_mode_declared(m: Manifests) -> list[str]:
    """Each run names its storage mode. One node: the default `coschedule:
    workspaces`, where the affinity assistant pins every pod sharing the claim
    to one node (its placeholder pod asks for 50m CPU and no GPU). Parallel:
    `coschedule: disabled` and a ReadWriteMany claim that pods on any node mount."""
    errors = []
    for label, run, spec, _p in _pipeline_runs(m):
        mode = _annotations(run).get(MODE)
        if mode not in MODES:
            errors.append(f"{label}: annotation {MODE} must be one of {sorted(MODES)}, not {mode!r}")
        elif mode == "parallel":
            errors += [f"{label}: parallel mode mounts workspace {w.get('name')!r} on several nodes: "
                       "it needs accessModes [ReadWriteMany]"
                       for w in spec.get("workspaces") or [] if "volumeClaimTemplate" in w
                       and "ReadWriteMany" not in ((w["volumeClaimTemplate"].get("spec") or {}).get("accessModes") or [])]
    return errors


def matrix_timeouts_hold(m: Manifests) -> list[str]:
    """A TaskRun's timeout counts from its creation, and a matrix creates every
    branch at once: with N notebooks and G GPUs the last branch waits
    ceil(N/G)-1 turns before it starts. Its timeout must cover every turn, and
    the run's timeouts.tasks the longest chain of task timeouts."""
    errors = []
    for label, run, spec, pipeline in _pipeline_runs(m):
        notes = _annotations(run)
        each = _seconds(notes.get(NOTEBOOK_TIME))
        gpus = int(notes[GPUS]) if str(notes.get(GPUS, "")).isdigit() else 0
        if each is None or gpus < 1:
            errors.append(f"{label}: annotations {GPUS} (a whole number) and {NOTEBOOK_TIME} (a duration) are needed")
            continue
        params = _run_params(spec, pipeline)
        tasks = {pt.get("name"): pt for pt in pipeline.get("tasks") or []}
        weight: dict[str, float] = {}
        for name, pt in tasks.items():
            own = _explicit_timeout(spec, pt) if _when_holds(pt, params) else 0.0
            if own is None:
                errors.append(f"{label}/{name}: no timeout of its own, so Tekton gives it all of timeouts.tasks")
            weight[name] = own or 0.0
            task = m.resolve_task(pt) or {}
            if own and _requests_gpu(task):
                size = _matrix_size(pt, params)
                turns = math.ceil(size / gpus)
                if own < turns * each:
                    errors.append(f"{label}/{name}: timeout {_hm(own)}, but {size} notebooks on {gpus} GPU(s) run in "
                                  f"{turns} turns of {_hm(each)}: the last TaskRun needs {_hm(turns * each)}, "
                                  "waiting included")
        order = rules.graph_order({n: _deps(pt) & set(tasks) for n, pt in tasks.items()}) or []
        finish: dict[str, float] = {}
        for name in order:
            finish[name] = weight[name] + max((finish[d] for d in _deps(tasks[name]) & set(tasks)), default=0.0)
        longest = max(finish.values(), default=0.0)
        budget, _ = _run_timeouts(spec)
        if longest > budget:
            errors.append(f"{label}: the longest chain of task timeouts is {_hm(longest)}, "
                          f"more than timeouts.tasks {_hm(budget)}")
    return errors


def task_timeouts_within_run(m: Manifests) -> list[str]:
    """No pipeline task may be allowed longer than the run gives all its tasks
    (finally tasks: than timeouts.finally); the run's own budget would cut it."""
    errors = []
    for label, _run, spec, pipeline in _pipeline_runs(m):
        tasks_budget, finally_budget = _run_timeouts(spec)
        for section, budget, key in (("tasks", tasks_budget, "tasks"), ("finally", finally_budget, "finally")):
            for pt in pipeline.get(section) or []:
                own = _explicit_timeout(spec, pt)
                if own is not None and own > budget:
                    errors.append(f"{label}/{pt.get('name')}: timeout {_hm(own)} exceeds timeouts.{key} {_hm(budget)}")
    return errors


def claims_do_not_pile_up(m: Manifests) -> list[str]:
    """Claims from a volumeClaimTemplate outlive the run in `coschedule:
    workspaces` mode unless the run asks Tekton (v1.11+) to delete them; the
    reports leave with a finally export to an `artifacts` workspace bound to
    lasting storage."""
    errors = []
    for label, run, spec, _p in _pipeline_runs(m):
        templated = [w for w in spec.get("workspaces") or [] if "volumeClaimTemplate" in w]
        if templated and _annotations(run).get(MODE) == "one-node" and _annotations(run).get(AUTO_CLEANUP) != "true":
            errors.append(f"{label}: a claim per run from volumeClaimTemplate stays until the PipelineRun is deleted; "
                          f'annotate {AUTO_CLEANUP}: "true"')
        errors += [f"{label}: workspace {ARTIFACTS!r} must be bound to lasting storage ({' or '.join(LASTING)})"
                   for w in spec.get("workspaces") or [] if w.get("name") == ARTIFACTS
                   and not any(k in w for k in LASTING)]
    for label, pipeline in m.pipeline_specs():
        if ARTIFACTS not in {w.get("name") for w in pipeline.get("workspaces") or []}:
            errors.append(f"{label}: no {ARTIFACTS!r} workspace to export the reports to")
            continue
        exporting = []
        for pt in pipeline.get("finally") or []:
            names = [w.get("name") for w in pt.get("workspaces") or [] if w.get("workspace") == ARTIFACTS]
            task = m.resolve_task(pt) or {}
            for step in _script_steps(task, "summary"):
                exporting += [n for n in names if (var := _env_for(step, f"$(workspaces.{n}.path)"))
                              and f'--export-dir "${{{var}}}"' in (step.get("script") or "")]
        if not exporting:
            errors.append(f"{label}: no finally task passes the {ARTIFACTS!r} workspace to gpuflow.summary --export-dir")
    return errors


def summary_scoped_and_backups_pruned(m: Manifests) -> list[str]:
    """A reused workspace keeps other runs' out/*/steps/*.json and the clone's
    backups: the summary reads only this run's notebooks, and the clone prunes
    its backups to a number the Pipeline takes as a param."""
    errors = []
    for label, pipeline in m.pipeline_specs():
        arrays = {n for pt in pipeline.get("tasks") or [] for p in (pt.get("matrix") or {}).get("params") or []
                  for v in p.get("value") or [] if (n := _array_name(v))}
        for pt in pipeline.get("finally") or []:
            task = m.resolve_task(pt) or {}
            for step in _script_steps(task, "summary"):
                fed = {_array_name(v) for p in pt.get("params") or [] for v in (p.get("value") or [])
                       if isinstance(p.get("value"), list)}
                passed = {_array_name(a) for a in step.get("args") or []}
                script = step.get("script") or ""
                if not arrays <= fed or '--notebooks "$@"' not in script or not any(passed):
                    errors.append(f"{label}/{pt.get('name')}: the summary must get the run's notebooks "
                                  f"({', '.join(sorted(arrays))}) and pass them as --notebooks")
                if "--suffix" not in script:
                    errors.append(f"{label}/{pt.get('name')}: the summary must get the artifact --suffix")
        for pt in rules._pipeline_tasks(pipeline):
            task = m.resolve_task(pt) or {}
            for step in _script_steps(task, "clone"):
                var = re.search(r'--keep-backups "\$\{(\w+)\}"', step.get("script") or "")
                source = next((e.get("value") for e in step.get("env") or [] if var and e.get("name") == var.group(1)), "")
                param = rules.PARAM_REF.fullmatch(str(source))
                given = {p.get("name"): p.get("value") for p in pt.get("params") or []}
                if not (var and param and rules.PARAM_REF.fullmatch(str(given.get(param.group(1), "")))):
                    errors.append(f"{label}/{pt.get('name')}: the clone must get --keep-backups from a Pipeline param")
    return errors


def _array_name(value: Any) -> str | None:
    m = rules.PARAM_REF.fullmatch(str(value))
    return (m.group(2) or m.group(1)) if m and m.group(3) else None


def no_root_by_default(m: Manifests) -> list[str]:
    """`chown -R` as root fails on NFS with root squash and then skips every
    task: the root step is opt-in, a non-root check says what to fix, and the
    kubelet re-chowns a volume only when its root does not match fsGroup."""
    errors = []
    for label, pipeline in m.pipeline_specs():
        defaults = {p.get("name"): p.get("default") for p in pipeline.get("params") or []}
        tasks = {pt.get("name"): pt for pt in pipeline.get("tasks") or []}
        root = {n for n, pt in tasks.items() if _has_root_step(m.resolve_task(pt) or {})}
        errors += [f"{label}/{n}: a root task must be off by default (a `when` on a param defaulting to \"false\")"
                   for n in sorted(root) if _when_holds(tasks[n], defaults)]
        checks = {n for n, pt in tasks.items() if any("--workspace" in (s.get("script") or "")
                                                      for s in _script_steps(m.resolve_task(pt) or {}, "doctor"))}
        if not checks:
            errors.append(f"{label}: no non-root task checks that the workspace is writable (gpuflow.doctor --workspace)")
        for name in sorted(set(tasks) - root - checks):
            if not _upstream(tasks, name) & checks:
                errors.append(f"{label}/{name}: does not run after the workspace check")
    for label, _run, spec, _p in _pipeline_runs(m):
        pod = ((spec.get("taskRunTemplate") or {}).get("podTemplate") or {}).get("securityContext") or {}
        if pod.get("fsGroupChangePolicy") != "OnRootMismatch":
            errors.append(f"{label}: podTemplate.securityContext.fsGroupChangePolicy must be OnRootMismatch")
    return errors


def _has_root_step(task: dict[str, Any]) -> bool:
    return any((rules.merged_step(task, s).get("securityContext") or {}).get("runAsUser") == 0 for s in rules._steps(task))


def _upstream(tasks: dict[str, dict[str, Any]], name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(_deps(tasks[name]))
    while todo:
        dep = todo.pop()
        if dep in tasks and dep not in seen:
            seen.add(dep)
            todo += _deps(tasks[dep])
    return seen


def restricted_pod_security(m: Manifests) -> list[str]:
    """Every pod a run starts with its params passes the "restricted" Pod
    Security level, given the cluster flag `set-security-context: "true"` for
    the containers Tekton injects; the pod-level context covers any container
    added without one of its own."""
    errors = []
    for label, _run, spec, pipeline in _pipeline_runs(m):
        pod = ((spec.get("taskRunTemplate") or {}).get("podTemplate") or {}).get("securityContext") or {}
        if pod.get("runAsNonRoot") is not True or (pod.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            errors.append(f"{label}: podTemplate.securityContext needs runAsNonRoot: true and "
                          "seccompProfile: {type: RuntimeDefault}")
        params = _run_params(spec, pipeline)
        for pt in rules._pipeline_tasks(pipeline):
            task = m.resolve_task(pt)
            if task is not None and _when_holds(pt, params):
                errors += [f"{label}/{pt.get('name')}: {e}" for e in restricted_violations(task, pod)]
    return errors


def restricted_violations(task: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    """What the "restricted" Pod Security level refuses in the pod of `task`
    under the pod-level security context `pod`."""
    containers = [(s.get("name"), rules.merged_step(task, s).get("securityContext") or {}) for s in rules._steps(task)]
    containers += [(s.get("name"), s.get("securityContext") or {}) for s in task.get("sidecars") or []]
    containers += [(name, INJECTED_CONTEXT) for name in INJECTED]
    errors = []
    for name, ctx in containers:
        caps = ctx.get("capabilities") or {}
        seccomp = (ctx.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
        problems = [
            ("privileged", ctx.get("privileged") is True),
            ("allowPrivilegeEscalation is not false", ctx.get("allowPrivilegeEscalation") is not False),
            ("capabilities do not drop ALL", "ALL" not in (caps.get("drop") or [])),
            ("capabilities add more than NET_BIND_SERVICE", bool(set(caps.get("add") or []) - {"NET_BIND_SERVICE"})),
            ("runAsNonRoot is not true", ctx.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True),
            ("runs as UID 0", ctx.get("runAsUser", pod.get("runAsUser")) == 0),
            ("no RuntimeDefault/Localhost seccomp profile", seccomp not in ("RuntimeDefault", "Localhost")),
        ]
        errors += [f"container {name}: {what}" for what, bad in problems if bad]
    for vol in task.get("volumes") or []:
        kinds = set(vol) - {"name"}
        errors += [f"volume {vol.get('name')}: type {k} is not allowed" for k in kinds - RESTRICTED_VOLUMES]
    return errors


def rbac_not_tied_to_a_namespace(m: Manifests) -> list[str]:
    """A subject's namespace comes from the kustomization, never the file:
    a hard-coded `default` gives a listener in any other namespace no rights."""
    return [f"{_label(d)}: subject {s.get('name')!r} hard-codes namespace {s['namespace']!r}"
            for d in m.docs if d.get("kind") in ("RoleBinding", "ClusterRoleBinding")
            for s in d.get("subjects") or [] if "namespace" in s]


def no_install_by_default(m: Manifests) -> list[str]:
    """The test step runs with the image's interpreter as it is: installing at
    run time needs the network from every GPU node and was never exercised."""
    errors = []
    for label, spec in m.task_specs():
        for step in _script_steps(spec, "test"):
            for name in filter(None, map(_array_name, step.get("args") or [])):
                default = next((p.get("default") for p in spec.get("params") or [] if p.get("name") == name), None)
                if NO_INSTALL not in (default or []):
                    errors.append(f"{label}: param {name!r} must default to [{NO_INSTALL!r}]")
    for label, pipeline in m.pipeline_specs():
        for name in sorted(_test_arg_sources(m, pipeline)):
            default = next((q.get("default") for q in pipeline.get("params") or [] if q.get("name") == name), None)
            if NO_INSTALL not in (default or []):
                errors.append(f"{label}: Pipeline param {name!r} must default to [{NO_INSTALL!r}]")
    for label, _run, spec, pipeline in _pipeline_runs(m):
        sources = _test_arg_sources(m, pipeline)
        errors += [f"{label}: {p.get('name')} overrides the default without {NO_INSTALL}"
                   for p in spec.get("params") or [] if p.get("name") in sources
                   and NO_INSTALL not in (p.get("value") or [])]
    return errors


def _test_arg_sources(m: Manifests, pipeline: dict[str, Any]) -> set[str]:
    """The Pipeline's array params that end up as gpuflow.test's arguments."""
    sources = set()
    for pt in rules._pipeline_tasks(pipeline):
        if _script_steps(m.resolve_task(pt) or {}, "test"):
            sources |= {n for p in pt.get("params") or [] if isinstance(p.get("value"), list)
                        for n in map(_array_name, p["value"]) if n}
    return sources


RULES: dict[str, Callable[[Manifests], list[str]]] = {
    f.__name__: f for f in (
        no_device_selection_env, storage_mode_declared, matrix_timeouts_hold, task_timeouts_within_run,
        claims_do_not_pile_up, summary_scoped_and_backups_pruned, no_root_by_default, restricted_pod_security,
        rbac_not_tied_to_a_namespace, no_install_by_default,
    )
}
