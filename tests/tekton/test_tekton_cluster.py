"""What a real cluster would do with the manifests: each rule of
cluster_rules.py holds for the shipped files and catches its planted mistake."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import cluster_rules as cluster
import pytest
import tekton_rules as rules
import yaml

TEKTON = Path(__file__).resolve().parents[2] / "tekton"


def _task(m: rules.Manifests, name: str) -> dict[str, Any]:
    return m.tasks[name]["spec"]


def _pipeline(m: rules.Manifests) -> dict[str, Any]:
    return m.pipelines["gpuflow-notebooks"]["spec"]


def _pt(m: rules.Manifests, name: str) -> dict[str, Any]:
    spec = _pipeline(m)
    return next(t for t in spec["tasks"] + spec["finally"] if t["name"] == name)


def _run(m: rules.Manifests, variant: str) -> dict[str, Any]:
    return next(d for d in m.runs if d["metadata"]["generateName"].startswith(f"gpuflow-scrna-{variant}"))


def _triggered(m: rules.Manifests) -> dict[str, Any]:
    return next(d for d in m.runs if d["metadata"]["generateName"].startswith("gpuflow-ci"))


def _pod(run: dict[str, Any]) -> dict[str, Any]:
    return run["spec"]["taskRunTemplate"]["podTemplate"]


@pytest.mark.parametrize("rule", sorted(cluster.RULES))
def test_shipped_manifests_hold_on_a_real_cluster(pristine: rules.Manifests, rule: str) -> None:
    assert cluster.RULES[rule](pristine) == []


def test_every_storage_mode_has_an_example(pristine: rules.Manifests) -> None:
    modes = {r["metadata"]["annotations"][cluster.MODE] for r in pristine.runs}
    assert modes == set(cluster.MODES)


# -- 1. the device plugin picks the GPU -------------------------------------------

def test_rejects_device_selection_in_env(manifests: rules.Manifests) -> None:
    _task(manifests, "gpuflow-execute")["steps"][0]["env"].append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"})
    _task(manifests, "gpuflow-convert")["stepTemplate"]["env"].append({"name": "CUDA_VISIBLE_DEVICES", "value": "0"})
    _pod(_run(manifests, "lite"))["env"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]
    errors = cluster.no_device_selection_env(manifests)
    assert len(errors) == 3, errors
    assert any("gpuflow-execute/execute: sets NVIDIA_VISIBLE_DEVICES" in e for e in errors)


# -- 2. matrix fan-out: storage modes and waiting turns ----------------------------

def test_rejects_a_matrix_that_outgrows_its_timeout(manifests: rules.Manifests) -> None:
    run = _run(manifests, "full")
    notebooks = next(p for p in run["spec"]["params"] if p["name"] == "notebooks")
    notebooks["value"] = ["01_a", "02_b", "03_c"]  # three notebooks, still one GPU on the node
    assert cluster.matrix_timeouts_hold(manifests) == [
        "PipelineRun/gpuflow-scrna-full-/execute: timeout 3h00m, but 3 notebooks on 1 GPU(s) run in 3 turns "
        "of 3h00m: the last TaskRun needs 9h00m, waiting included"]


def test_rejects_a_task_without_its_own_timeout_and_a_short_budget(manifests: rules.Manifests) -> None:
    _pt(manifests, "convert").pop("timeout")
    _run(manifests, "lite")["spec"]["timeouts"] = {"pipeline": "1h", "tasks": "45m", "finally": "15m"}
    errors = cluster.matrix_timeouts_hold(manifests)
    assert any("convert: no timeout of its own" in e for e in errors)
    assert any("gpuflow-scrna-lite-: the longest chain of task timeouts" in e for e in errors)


def test_rejects_unknown_mode_and_parallel_on_a_single_node_claim(manifests: rules.Manifests) -> None:
    _run(manifests, "lite")["metadata"]["annotations"][cluster.MODE] = "fast"
    claim = _run(manifests, "parallel")["spec"]["workspaces"][0]["volumeClaimTemplate"]["spec"]
    claim["accessModes"] = ["ReadWriteOnce"]
    errors = cluster.storage_mode_declared(manifests)
    assert any("must be one of ['one-node', 'parallel'], not 'fast'" in e for e in errors)
    assert any("needs accessModes [ReadWriteMany]" in e for e in errors)


def test_parallel_mode_may_bind_two_claims_but_one_node_may_not(manifests: rules.Manifests) -> None:
    assert rules.one_pvc_per_task(manifests) == []  # parallel binds shared + artifacts claims
    lite = _run(manifests, "lite")
    lite["spec"]["workspaces"].append({"name": "artifacts", "persistentVolumeClaim": {"claimName": "reports"}})
    assert any("gpuflow-scrna-lite-/summary: binds 2 PVCs" in e for e in rules.one_pvc_per_task(manifests))


# -- 3. timeouts consistent --------------------------------------------------------

def test_rejects_task_timeout_beyond_the_run_budget(manifests: rules.Manifests) -> None:
    _pt(manifests, "stage-and-test")["timeout"] = "4h"
    _pt(manifests, "summary")["timeout"] = "1h"
    errors = cluster.task_timeouts_within_run(manifests)
    assert any("gpuflow-scrna-lite-/stage-and-test: timeout 4h00m exceeds timeouts.tasks" in e for e in errors)
    assert any("gpuflow-ci-/stage-and-test" in e for e in errors)  # the TriggerTemplate's run too
    assert any("summary: timeout 1h00m exceeds timeouts.finally" in e for e in errors)


def test_run_override_of_a_task_timeout_counts(manifests: rules.Manifests) -> None:
    run = _run(manifests, "lite")
    execute = next(t for t in run["spec"]["taskRunSpecs"] if t["pipelineTaskName"] == "execute")
    execute["timeout"] = "9h"
    assert any("lite-/execute: timeout 9h00m" in e for e in cluster.task_timeouts_within_run(manifests))


# -- 4. no claim left behind, reports exported -------------------------------------

def test_rejects_claims_left_behind_and_reports_that_die_with_them(manifests: rules.Manifests) -> None:
    del _triggered(manifests)["metadata"]["annotations"][cluster.AUTO_CLEANUP]
    _run(manifests, "parallel")["spec"]["workspaces"][1] = {"name": "artifacts", "emptyDir": {}}
    step = _task(manifests, "gpuflow-summary")["steps"][0]
    step["script"] = step["script"].replace(' --export-dir "${EXPORT_DIR}"', "")
    errors = cluster.claims_do_not_pile_up(manifests)
    assert any("gpuflow-ci-: a claim per run" in e for e in errors)
    assert any("must be bound to lasting storage" in e for e in errors)
    assert any("--export-dir" in e for e in errors)


# -- 5. a reused claim stays clean -------------------------------------------------

def test_rejects_unscoped_summary_and_unpruned_backups(manifests: rules.Manifests) -> None:
    step = _task(manifests, "gpuflow-summary")["steps"][0]
    step["script"] = step["script"].replace('--notebooks "$@"', "")
    _pt(manifests, "fetch-tests")["params"] = [p for p in _pt(manifests, "fetch-tests")["params"]
                                               if p["name"] != "keep-backups"]
    errors = cluster.summary_scoped_and_backups_pruned(manifests)
    assert any("summary must get the run's notebooks (notebooks)" in e for e in errors)
    assert any("fetch-tests: the clone must get --keep-backups" in e for e in errors)


# -- 6. permissions without root ---------------------------------------------------

def test_rejects_root_by_default_and_missing_write_check(manifests: rules.Manifests) -> None:
    next(p for p in _pipeline(manifests)["params"] if p["name"] == "fix-ownership")["default"] = "true"
    _pt(manifests, "clone-notebooks")["runAfter"] = ["init-workspace"]
    _pod(_run(manifests, "full"))["securityContext"].pop("fsGroupChangePolicy")
    errors = cluster.no_root_by_default(manifests)
    assert any("init-workspace: a root task must be off by default" in e for e in errors)
    assert any("clone-notebooks: does not run after the workspace check" in e for e in errors)
    assert any("gpuflow-scrna-full-: podTemplate.securityContext.fsGroupChangePolicy" in e for e in errors)


# -- 7. Pod Security "restricted" -------------------------------------------------

def test_rejects_pods_restricted_namespaces_refuse(manifests: rules.Manifests) -> None:
    _pod(_run(manifests, "lite"))["securityContext"] = {"fsGroup": 1001}
    full = _run(manifests, "full")
    full["spec"]["params"].append({"name": "fix-ownership", "value": "true"})
    errors = cluster.restricted_pod_security(manifests)
    assert any("lite-: podTemplate.securityContext needs runAsNonRoot" in e for e in errors)
    assert any("full-/init-workspace: container chown: runs as UID 0" in e for e in errors)
    assert any("full-/init-workspace: container chown: capabilities add" in e for e in errors)


def test_injected_containers_need_the_cluster_flag() -> None:
    bare = {"steps": [{"name": "s", "image": "x", "securityContext": dict(cluster.INJECTED_CONTEXT)}]}
    pod = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert cluster.restricted_violations(bare, pod) == []
    saved = dict(cluster.INJECTED_CONTEXT)
    try:
        cluster.INJECTED_CONTEXT.clear()  # set-security-context: "false", Tekton's default
        errors = cluster.restricted_violations(bare, pod)
    finally:
        cluster.INJECTED_CONTEXT.update(saved)
    assert "container prepare: allowPrivilegeEscalation is not false" in errors


def test_docs_name_the_security_context_flag() -> None:
    for doc in (TEKTON / "README.md", TEKTON.parent / "docs" / "tekton.md"):
        text = doc.read_text(encoding="utf-8")
        assert 'set-security-context: "true"' in text, doc


# -- 9. RBAC not tied to one namespace ---------------------------------------------

def test_rejects_hard_coded_subject_namespace(manifests: rules.Manifests) -> None:
    binding = next(d for d in manifests.docs if d.get("kind") == "ClusterRoleBinding")
    binding["subjects"][0]["namespace"] = "default"
    assert cluster.rbac_not_tied_to_a_namespace(manifests) == [
        "ClusterRoleBinding/gpuflow-triggers-clusterinterceptors: subject 'gpuflow-triggers' hard-codes namespace 'default'"]


def _kustomization(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))


def _listed(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")


def test_kustomizations_list_every_manifest_and_set_the_triggers_namespace() -> None:
    tasks = _kustomization(TEKTON)
    assert sorted(tasks["resources"]) == _listed(TEKTON)
    assert "namespace" not in tasks  # `kubectl apply -k tekton/ -n NAMESPACE` decides
    triggers = _kustomization(TEKTON / "triggers")
    assert triggers["namespace"] and sorted(triggers["resources"]) == _listed(TEKTON / "triggers")


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (the subject check above still runs)")
def test_kubectl_kustomize_binds_the_listener_in_any_namespace(tmp_path: Path) -> None:
    shutil.copytree(TEKTON, tmp_path / "tekton")
    assert {d["metadata"]["name"] for d in _kustomize(tmp_path / "tekton")} == set(rules.load(TEKTON).tasks) | {
        "gpuflow-notebooks", "gpuflow-notebooks-packed"}
    kustomization = tmp_path / "tekton" / "triggers" / "kustomization.yaml"
    doc = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
    kustomization.write_text(yaml.safe_dump({**doc, "namespace": "ci"}), encoding="utf-8")
    objects = _kustomize(tmp_path / "tekton" / "triggers")
    assert {"EventListener", "TriggerTemplate", "ClusterRoleBinding", "ServiceAccount"} <= {d["kind"] for d in objects}
    subjects = [s for d in objects if d["kind"].endswith("RoleBinding") for s in d["subjects"]]
    assert subjects and {s["namespace"] for s in subjects} == {"ci"}
    assert {d["metadata"].get("namespace") for d in objects if d["kind"] != "ClusterRoleBinding"} == {"ci"}


# -- 10. no pip at run time ---------------------------------------------------------

def test_rejects_installing_by_default(manifests: rules.Manifests) -> None:
    next(p for p in _pipeline(manifests)["params"] if p["name"] == "test-args")["default"] = []
    next(p for p in _task(manifests, "gpuflow-stage-and-test")["params"] if p["name"] == "test-args")["default"] = []
    _run(manifests, "full")["spec"]["params"].append({"name": "test-args", "value": ["-x"]})
    errors = cluster.no_install_by_default(manifests)
    assert any("gpuflow-stage-and-test: param 'test-args'" in e for e in errors)
    assert any("Pipeline param 'test-args'" in e for e in errors)
    assert any("full-: test-args overrides the default without --no-install" in e for e in errors)
