"""The webhook-level and gpuflow rules hold, and each catches its mistake."""
from __future__ import annotations

import pytest
import tekton_rules as rules


def _task(m: rules.Manifests, name: str) -> dict:
    return next(d for d in m.docs if d.get("kind") == "Task" and d["metadata"]["name"] == name)


def _pipeline(m: rules.Manifests) -> dict:
    return next(d for d in m.docs if d.get("kind") == "Pipeline")


def _pt(m: rules.Manifests, name: str) -> dict:
    spec = _pipeline(m)["spec"]
    return next(t for t in spec["tasks"] + spec["finally"] if t["name"] == name)


def _run(m: rules.Manifests, variant: str) -> dict:
    return next(d for d in m.docs if d.get("kind") == "PipelineRun"
                and d["metadata"]["generateName"].startswith(f"gpuflow-scrna-{variant}"))


@pytest.mark.parametrize("rule", sorted(rules.RULES))
def test_shipped_manifests_follow_rule(pristine: rules.Manifests, rule: str) -> None:
    assert rules.RULES[rule](pristine) == []


# -- the failure modes of the existing Tasks ------------------------------------

def test_rejects_wrong_uid_1000(manifests: rules.Manifests) -> None:
    _task(manifests, "gpuflow-execute")["spec"]["stepTemplate"]["securityContext"]["runAsUser"] = 1000
    _run(manifests, "lite")["spec"]["taskRunTemplate"]["podTemplate"]["securityContext"]["fsGroup"] = 1000
    errors = rules.runs_as_rapids(manifests)
    assert any("gpuflow-execute/execute: runAsUser is 1000" in e for e in errors)
    assert any("fsGroup is 1000" in e for e in errors)


def test_rejects_root_or_capabilities_outside_init(manifests: rules.Manifests) -> None:
    step = _task(manifests, "gpuflow-convert")["spec"]["steps"][0]
    step["securityContext"] = {"runAsUser": 0, "capabilities": {"add": ["SYS_ADMIN"]}}
    errors = rules.runs_as_rapids(manifests)
    assert any("runAsUser is 0" in e for e in errors)
    assert any("capabilities" in e for e in errors)


def test_rejects_several_pvcs_per_task(manifests: rules.Manifests) -> None:
    _pipeline(manifests)["spec"]["workspaces"].append({"name": "cache"})
    _pt(manifests, "download")["workspaces"][1]["workspace"] = "cache"
    _pt(manifests, "download")["workspaces"][1].pop("subPath")
    _run(manifests, "full")["spec"]["workspaces"].append(
        {"name": "cache", "persistentVolumeClaim": {"claimName": "gpuflow-cache"}})
    assert rules.one_pvc_per_task(manifests) == [
        "PipelineRun/gpuflow-scrna-full-/download: binds 2 PVCs ['gpuflow-cache', 'shared']"]


def test_rejects_summary_that_hides_failures(manifests: rules.Manifests) -> None:
    summary = _pt(manifests, "summary")
    summary["params"] = [p for p in summary["params"] if p["name"] != "pipeline-status"]
    summary["params"].append({"name": "pipeline-status", "value": "COMPLETED"})
    assert rules.summary_reports_failures(manifests) == [
        "gpuflow-notebooks: no finally task receives $(tasks.status)"]


def test_rejects_summary_that_drops_the_status_on_the_floor(manifests: rules.Manifests) -> None:
    step = _task(manifests, "gpuflow-summary")["spec"]["steps"][0]
    step["script"] = (step["script"].replace(' --title "${SUMMARY_TITLE}"', "")
                      .replace(' --pipeline-status "${PIPELINE_STATUS}"', ""))
    assert any("never reaches a script" in e for e in rules.summary_reports_failures(manifests))


def test_rejects_summary_outside_finally(manifests: rules.Manifests) -> None:
    spec = _pipeline(manifests)["spec"]
    spec["tasks"].append(spec.pop("finally")[0])
    spec["tasks"][-1]["runAfter"] = ["stage-and-test"]
    assert any("only in finally" in e for e in rules.pipeline_references_declared(manifests))
    assert rules.summary_reports_failures(manifests)


def test_rejects_gpu_in_step_template(manifests: rules.Manifests) -> None:
    spec = _task(manifests, "gpuflow-execute")["spec"]
    spec["stepTemplate"]["computeResources"] = spec["steps"][0].pop("computeResources")
    errors = rules.gpu_on_exactly_one_step(manifests)
    assert any("in stepTemplate" in e for e in errors)
    assert any("exactly one step" in e for e in errors)


def test_rejects_gpu_on_a_second_step_or_task_level(manifests: rules.Manifests) -> None:
    _task(manifests, "gpuflow-convert")["spec"]["steps"][0]["computeResources"] = {"limits": {"nvidia.com/gpu": 1}}
    _run(manifests, "lite")["spec"]["taskRunSpecs"] = [
        {"pipelineTaskName": "execute", "computeResources": {"limits": {"nvidia.com/gpu": 1}}}]
    errors = rules.gpu_on_exactly_one_step(manifests)
    assert any("exactly one step" in e for e in errors)
    assert any("task-level" in e for e in errors)


# -- webhook rules, one planted mistake each ----------------------------------------

def test_rejects_bad_names(manifests: rules.Manifests) -> None:
    _task(manifests, "gpuflow-execute")["spec"]["steps"][0]["name"] = "Pap_mill"
    _pt(manifests, "convert")["name"] = "Convert"
    errors = rules.names_are_dns1123(manifests)
    assert any("'Pap_mill'" in e for e in errors) and any("'Convert'" in e for e in errors)


def test_rejects_undeclared_references(manifests: rules.Manifests) -> None:
    env = _task(manifests, "gpuflow-clone")["spec"]["steps"][0]["env"]
    env += [{"name": "A", "value": "$(params.nope)"}, {"name": "B", "value": "$(workspaces.nope.path)"},
            {"name": "C", "value": "$(results.nope.path)"}]
    _pt(manifests, "convert")["params"].append({"name": "suffix2", "value": "$(tasks.execute.results.nope)"})
    task_errors = rules.task_references_declared(manifests)
    assert len(task_errors) == 3
    assert any("declares no result 'nope'" in e for e in rules.pipeline_references_declared(manifests))
    assert any("'suffix2' is not a param" in e for e in rules.required_params_supplied(manifests))


def test_rejects_script_with_command(manifests: rules.Manifests) -> None:
    _task(manifests, "gpuflow-convert")["spec"]["steps"][0]["command"] = ["python"]
    assert rules.script_xor_command(manifests)


def test_rejects_missing_run_after_target_and_cycles(manifests: rules.Manifests) -> None:
    _pt(manifests, "convert")["runAfter"] = ["execute", "runn"]
    _pt(manifests, "execute")["runAfter"].append("stage-and-test")
    errors = rules.run_after_is_a_dag(manifests)
    assert any("'runn' is not a task" in e for e in errors)
    assert any("cycle" in e for e in errors)


def test_rejects_matrix_mistakes(manifests: rules.Manifests) -> None:
    execute = _pt(manifests, "execute")
    execute["params"].append({"name": "notebook", "value": "x"})
    _pt(manifests, "convert")["matrix"]["params"][0]["value"] = ["$(params.repo-url[*])"]
    _pt(manifests, "stage-and-test")["matrix"]["params"].append(
        {"name": "marker", "value": [str(i) for i in range(300)]})
    errors = rules.matrix_rules(manifests)
    assert any("in both params and matrix" in e for e in errors)
    assert any("not an array param" in e for e in errors)
    assert any("combinations" in e for e in errors)


def test_rejects_missing_required_params(manifests: rules.Manifests) -> None:
    _pt(manifests, "clone-notebooks")["params"] = [
        p for p in _pt(manifests, "clone-notebooks")["params"] if p["name"] != "url"]
    _run(manifests, "lite")["spec"]["params"] = [
        p for p in _run(manifests, "lite")["spec"]["params"] if p["name"] != "notebooks"]
    errors = rules.required_params_supplied(manifests)
    assert any("'url' not supplied" in e for e in errors)
    assert any("'notebooks' not supplied" in e for e in errors)


def test_rejects_param_pasted_into_script(manifests: rules.Manifests) -> None:
    step = _task(manifests, "gpuflow-convert")["spec"]["steps"][0]
    step["script"] = step["script"].replace('"${OUTPUT_NOTEBOOK}"', "$(params.notebook)")
    errors = rules.scripts_take_values_from_env(manifests)
    assert any("Tekton variable inside script text: $(params." in e for e in errors)


def test_rejects_unquoted_shell_variable_and_extra_commands(manifests: rules.Manifests) -> None:
    step = _task(manifests, "gpuflow-convert")["spec"]["steps"][0]
    step["script"] = step["script"].replace('"${OUTPUT_HTML}"', "$OUTPUT_HTML") + "pip install x\npython -m gpuflow.test\n"
    errors = rules.scripts_take_values_from_env(manifests)
    assert any("$OUTPUT_HTML" in e for e in errors)
    assert any("exactly one" in e for e in errors)
    assert any("installs at run time (pip install)" in e for e in errors)


def test_rejects_too_many_or_typed_results(manifests: rules.Manifests) -> None:
    _task(manifests, "gpuflow-clone")["spec"]["results"] += [{"name": f"r{i}"} for i in range(9)]
    _task(manifests, "gpuflow-summary")["spec"]["results"][0]["type"] = "object"
    errors = rules.results_stay_tiny(manifests)
    assert len(errors) == 2


def test_rejects_default_or_bad_timeouts(manifests: rules.Manifests) -> None:
    _run(manifests, "lite")["spec"].pop("timeouts")
    _run(manifests, "full")["spec"]["timeouts"] = {"pipeline": "1h", "tasks": "1h", "finally": "10m"}
    _pt(manifests, "execute")["timeout"] = "thirty"
    errors = rules.timeouts_explicit(manifests)
    assert len(errors) == 3


def test_rejects_bad_on_error(manifests: rules.Manifests) -> None:
    _task(manifests, "gpuflow-convert")["spec"]["steps"][0]["onError"] = "ignore"
    _pt(manifests, "execute").update(onError="continue", retries=2)
    assert len(rules.on_error_values(manifests)) == 2


def test_rejects_undeclared_trigger_template_param(manifests: rules.Manifests) -> None:
    template = next(d for d in manifests.docs if d.get("kind") == "TriggerTemplate")
    template["spec"]["resourcetemplates"][0]["spec"]["params"][0]["value"] = "$(tt.params.imag)"
    assert rules.triggers_rules(manifests) == [
        "TriggerTemplate/gpuflow-notebooks: $(tt.params.imag) is not declared"]


def test_rejects_trigger_binding_mismatch(manifests: rules.Manifests) -> None:
    binding = next(d for d in manifests.docs if d.get("kind") == "TriggerBinding")
    binding["spec"]["params"][1]["name"] = "sha"
    errors = rules.triggers_rules(manifests)
    assert any("'sha' is not a TriggerTemplate param" in e for e in errors)
    assert any("'revision' is never bound" in e for e in errors)


def test_trigger_filter_covers_the_guide_conditions(pristine: rules.Manifests) -> None:
    listener = next(d for d in pristine.docs if d.get("kind") == "EventListener")
    interceptors = listener["spec"]["triggers"][0]["interceptors"]
    github = next(i for i in interceptors if i["ref"]["name"] == "github")
    params = {p["name"]: p["value"] for p in github["params"]}
    assert params["eventTypes"] == ["push", "pull_request"] and params["secretRef"]["secretName"]
    cel = next(i for i in interceptors if i["ref"]["name"] == "cel")
    text = next(p["value"] for p in cel["params"] if p["name"] == "filter")
    for needle in ("'refs/heads/main', 'refs/heads/develop'", "['main', 'develop']", "'[gpu]'", "'[notebook]'",
                   "startsWith('notebooks/')", "'push'", "'pull_request'"):
        assert needle in text, needle
    assert text.count("(") == text.count(")")
