"""Every manifest passes the strict schemas; planted mistakes do not."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import schema_check
import tekton_rules as rules

SCHEMAS = Path(schema_check.SCHEMAS)
SHARED_CRDS = SCHEMAS.parents[3] / "shared" / "tekton" / "crds-v1.15.0"


def _task(m: rules.Manifests, name: str) -> dict:
    return next(d for d in m.docs if d.get("kind") == "Task" and d["metadata"]["name"] == name)


def _kind(m: rules.Manifests, kind: str, generate: str = "") -> dict:
    return next(d for d in m.docs if d.get("kind") == kind
                and d["metadata"].get("generateName", "").startswith(generate))


def _all_errors(m: rules.Manifests) -> list[str]:
    return [e for doc in m.docs for e in schema_check.errors(doc)]


def test_every_manifest_is_valid(pristine: rules.Manifests) -> None:
    kinds = {d["kind"] for d in pristine.all()}
    assert {"Task", "Pipeline", "PipelineRun", "EventListener", "TriggerBinding", "TriggerTemplate"} <= kinds
    assert _all_errors(pristine) == []


def test_committed_schemas_are_current() -> None:
    if not SHARED_CRDS.is_dir():
        pytest.skip("../shared/tekton is not here (a fresh machine has none)")
    spec = importlib.util.spec_from_file_location("regenerate", SCHEMAS / "regenerate.py")
    regenerate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regenerate)
    for name, text in regenerate.render(SHARED_CRDS).items():
        assert (SCHEMAS / name).read_text(encoding="utf-8") == text, f"{name} is stale: run regenerate.py"


def test_schemas_are_strict_and_description_free() -> None:
    text = (SCHEMAS / "task_v1.json").read_text(encoding="utf-8")
    assert '"additionalProperties": false' in text
    assert "Description is a user-facing" not in text  # CRD descriptions were dropped
    assert (SCHEMAS / "LICENSE").is_file() and (SCHEMAS / "NOTE.md").is_file()


# -- failure modes of the existing Tasks, each planted and caught -----------

def test_rejects_v1beta1_step_resources_field(manifests: rules.Manifests) -> None:
    step = _task(manifests, "gpuflow-execute")["spec"]["steps"][0]
    step["resources"] = step.pop("computeResources")
    assert any("'resources' was unexpected" in e for e in _all_errors(manifests))


def test_rejects_non_numeric_gpu_quantity(manifests: rules.Manifests) -> None:
    _task(manifests, "gpuflow-execute")["spec"]["steps"][0]["computeResources"]["limits"]["nvidia.com/gpu"] = "one"
    assert any("nvidia.com/gpu" in e and "'one'" in e for e in _all_errors(manifests))


def test_rejects_param_in_compute_resources(manifests: rules.Manifests) -> None:
    limits = _task(manifests, "gpuflow-execute")["spec"]["steps"][0]["computeResources"]["limits"]
    limits["nvidia.com/gpu"] = "$(params.gpu-count)"
    assert any("$(params.gpu-count)" in e for e in _all_errors(manifests))
    assert any("variable in computeResources" in e for e in rules.gpu_on_exactly_one_step(manifests))


def test_rejects_v1beta1_service_account_on_pipelinerun(manifests: rules.Manifests) -> None:
    _kind(manifests, "PipelineRun", "gpuflow-scrna-lite")["spec"]["serviceAccountName"] = "default"
    assert any("'serviceAccountName' was unexpected" in e for e in _all_errors(manifests))


def test_rejects_runafter_typo(manifests: rules.Manifests) -> None:
    pipeline = _kind(manifests, "Pipeline")
    task = pipeline["spec"]["tasks"][-1]
    task["runafter"] = task.pop("runAfter")
    assert any("'runafter' was unexpected" in e for e in _all_errors(manifests))


def test_rejects_mistake_inside_inline_task_spec(manifests: rules.Manifests) -> None:
    pipeline = _kind(manifests, "Pipeline")
    pipeline["spec"]["tasks"][0] = {
        "name": "inline", "taskSpec": {"steps": [{"name": "s", "image": "x", "script": "#!/bin/sh\n", "resources": {}}]},
    }
    assert any("taskSpec" in e and "'resources' was unexpected" in e for e in _all_errors(manifests))


def test_rejects_mistake_inside_trigger_template_pipelinerun(manifests: rules.Manifests) -> None:
    template = _kind(manifests, "TriggerTemplate")
    template["spec"]["resourcetemplates"][0]["spec"]["timeout"] = "1h"
    assert any("resourcetemplates/0" in e and "'timeout' was unexpected" in e for e in _all_errors(manifests))


def test_rejects_volume_claim_template_typo(manifests: rules.Manifests) -> None:
    run = _kind(manifests, "PipelineRun", "gpuflow-scrna-full")
    claim = run["spec"]["workspaces"][0]["volumeClaimTemplate"]["spec"]
    claim["acessModes"] = claim.pop("accessModes")
    assert any("volumeClaimTemplate" in e and "acessModes" in e for e in _all_errors(manifests))


def test_rejects_pod_template_affinity_and_task_volume_typos(manifests: rules.Manifests) -> None:
    run = _kind(manifests, "PipelineRun", "gpuflow-scrna-full")
    run["spec"]["taskRunTemplate"]["podTemplate"]["affinity"] = {"nodeAfinity": {}}
    _task(manifests, "gpuflow-execute")["spec"]["volumes"][0]["emptyDir"]["medium"] = 5
    errors = _all_errors(manifests)
    assert any("nodeAfinity" in e for e in errors)
    assert any("gpuflow-execute" in e and "medium" in e for e in errors)


def test_rejects_unknown_trigger_fields(manifests: rules.Manifests) -> None:
    _kind(manifests, "TriggerTemplate")["spec"]["resourceTemplates"] = []
    _kind(manifests, "EventListener")["spec"]["triggers"][0]["interceptor"] = []
    errors = _all_errors(manifests)
    assert any("'resourceTemplates' was unexpected" in e for e in errors)
    assert any("'interceptor' was unexpected" in e for e in errors)


def test_rejects_v1beta1_tekton_objects(manifests: rules.Manifests) -> None:
    _task(manifests, "gpuflow-convert")["apiVersion"] = "tekton.dev/v1beta1"
    assert _all_errors(manifests)
    assert rules.api_is_v1(manifests)
