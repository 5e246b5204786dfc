"""Strict schema validation of Tekton manifests, offline.

tekton.dev objects go to the strict schemas converted from Tekton's v1.15.0
CRDs (see schemas/NOTE.md); the parts those CRDs leave open
(x-kubernetes-preserve-unknown-fields) are checked here too: inline
taskSpec/pipelineSpec against the Task/Pipeline spec schemas,
volumeClaimTemplate, affinity and volumes with kubernetes-validate (strict).
Triggers objects go to hand-written schemas from the Triggers Go types.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

SCHEMAS = Path(__file__).resolve().parent / "schemas"
K8S_VERSION = "1.32"
TEKTON = {
    ("tekton.dev/v1", "Task"): "task_v1.json",
    ("tekton.dev/v1", "Pipeline"): "pipeline_v1.json",
    ("tekton.dev/v1", "PipelineRun"): "pipelinerun_v1.json",
    ("tekton.dev/v1", "TaskRun"): "taskrun_v1.json",
    ("tekton.dev/v1beta1", "StepAction"): "stepaction_v1beta1.json",
}
BUILTIN_GROUPS = ("v1", "rbac.authorization.k8s.io/v1")
# keys an inline taskSpec may carry besides the Task spec (EmbeddedTask)
EMBEDDED_TASK_KEYS = ("apiVersion", "kind", "metadata", "spec")

Doc = dict[str, Any]


@functools.cache
def _schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


@functools.cache
def _validator(name: str, pointer: tuple[str, ...] = ()) -> jsonschema.Draft7Validator:
    schema: dict[str, Any] = _schema(name)
    for key in pointer:
        schema = schema[key]
    return jsonschema.Draft7Validator(schema)


@functools.cache
def _triggers_validator(kind: str) -> jsonschema.Draft7Validator:
    whole = _schema("triggers_v1beta1.json")
    schema = {**whole["kinds"][kind], "definitions": whole["definitions"]}
    return jsonschema.Draft7Validator(schema)


def _messages(validator: jsonschema.Draft7Validator, obj: Any, where: str) -> list[str]:
    return [
        f"{where}/{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _k8s(obj: Doc, where: str) -> list[str]:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(map(str, exc.path))
        return [f"{where}/{path}: {exc.message}"]
    return []


def _pod_parts(spec: dict[str, Any], where: str) -> list[str]:
    """affinity and volumes, which the Tekton CRDs leave unchecked, as a Pod."""
    parts = {k: spec[k] for k in ("affinity", "volumes") if k in spec}
    if not parts:
        return []
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": [{"name": "c", "image": "x"}], **parts}}
    return _k8s(pod, where)


def _claim(template: dict[str, Any], where: str) -> list[str]:
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           **copy.deepcopy(template)}
    pvc.setdefault("metadata", {"name": "check"})
    pvc["metadata"].setdefault("name", "check")
    return _k8s(pvc, where)


def _task_spec(spec: dict[str, Any], where: str) -> list[str]:
    errors = _messages(_validator("task_v1.json", ("properties", "spec")), spec, where)
    return errors + _pod_parts(spec, where)


def _embedded_task(spec: dict[str, Any], where: str) -> list[str]:
    plain = {k: v for k, v in spec.items() if k not in EMBEDDED_TASK_KEYS}
    return _task_spec(plain, where)


def _pipeline_spec(spec: dict[str, Any], where: str) -> list[str]:
    errors = _messages(_validator("pipeline_v1.json", ("properties", "spec")), spec, where)
    return errors + _inline(spec, where)


def _inline(spec: dict[str, Any], where: str) -> list[str]:
    """The pipeline tasks' inline specs, which the Pipeline schema leaves open."""
    errors: list[str] = []
    for section in ("tasks", "finally"):
        for i, task in enumerate(spec.get(section) or []):
            if isinstance(task, dict) and isinstance(task.get("taskSpec"), dict):
                errors += _embedded_task(task["taskSpec"], f"{where}/{section}/{i}/taskSpec")
            if isinstance(task, dict) and isinstance(task.get("pipelineSpec"), dict):
                errors += _pipeline_spec(task["pipelineSpec"], f"{where}/{section}/{i}/pipelineSpec")
    return errors


def _run_parts(spec: dict[str, Any], where: str) -> list[str]:
    """What PipelineRun/TaskRun leave open: claims, pod templates."""
    errors: list[str] = []
    for i, ws in enumerate(spec.get("workspaces") or []):
        if isinstance(ws, dict) and "volumeClaimTemplate" in ws:
            errors += _claim(ws["volumeClaimTemplate"], f"{where}/workspaces/{i}/volumeClaimTemplate")
    templates = [("taskRunTemplate/podTemplate", (spec.get("taskRunTemplate") or {}).get("podTemplate"))]
    templates += [(f"taskRunSpecs/{i}/podTemplate", s.get("podTemplate"))
                  for i, s in enumerate(spec.get("taskRunSpecs") or [])]
    templates += [("podTemplate", spec.get("podTemplate"))]
    for sub, pod in templates:
        if isinstance(pod, dict):
            errors += _pod_parts(pod, f"{where}/{sub}")
            if "securityContext" in pod:
                errors += _k8s({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
                                "spec": {"containers": [{"name": "c", "image": "x"}],
                                         "securityContext": pod["securityContext"]}},
                               f"{where}/{sub}")
    return errors


def errors(doc: Doc, where: str = "") -> list[str]:
    """Every schema error in one object, recursing into what it embeds."""
    if not isinstance(doc, dict):
        return [f"{where}: not a mapping"]
    api, kind = doc.get("apiVersion"), doc.get("kind")
    where = where or f"{kind}/{(doc.get('metadata') or {}).get('name') or (doc.get('metadata') or {}).get('generateName')}"
    if (api, kind) in TEKTON:
        found = _messages(_validator(TEKTON[(api, kind)]), doc, where)
        spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
        if kind == "Task":
            found += _pod_parts(spec, f"{where}/spec")
        if kind == "Pipeline":
            found += _inline(spec, f"{where}/spec")
        if kind in ("PipelineRun", "TaskRun"):
            found += _run_parts(spec, f"{where}/spec")
            if isinstance(spec.get("pipelineSpec"), dict):
                found += _pipeline_spec(spec["pipelineSpec"], f"{where}/spec/pipelineSpec")
            if isinstance(spec.get("taskSpec"), dict):
                found += _task_spec(spec["taskSpec"], f"{where}/spec/taskSpec")
        return found
    if api == "triggers.tekton.dev/v1beta1" and kind in ("EventListener", "TriggerBinding", "TriggerTemplate"):
        found = _messages(_triggers_validator(kind), doc, where)
        if kind == "TriggerTemplate":
            for i, item in enumerate((doc.get("spec") or {}).get("resourcetemplates") or []):
                found += errors(item, f"{where}/spec/resourcetemplates/{i}")
        return found
    if api in BUILTIN_GROUPS:
        return _k8s(doc, where)
    return [f"{where}: no schema for {api} {kind} (only tekton.dev/v1, StepAction v1beta1, Triggers v1beta1)"]

