"""The harness follows Tekton's contract (checked on small inline Tasks), and
the shipped Tasks run under it."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import tekton_rules as rules
import yaml
from harness import Harness, HarnessError

from tests.conftest import make_git_repo

TOY_TASK = yaml.safe_load(r"""
params:
  - name: word
  - name: flags
    type: array
    default: ["-a", "-b"]
results:
  - name: said
  - name: first-exit
workspaces:
  - name: out
stepTemplate:
  env:
    - name: SHARED
      value: from-template
    - name: WORD
      value: template-loses
steps:
  - name: fails-softly
    image: x
    onError: continue
    script: exit 3
  - name: say
    image: x
    env:
      - name: WORD
        value: $(params.word)
      - name: OUT
        value: $(workspaces.out.path)/said.txt
      - name: RESULT
        value: $(results.said.path)
    args: ["$(params.flags[*])", "last"]
    script: |
      #!/bin/sh
      set -eu
      printf '%s %s %s' "${WORD}" "${SHARED}" "$*" > "${OUT}"
      printf '%s' "${WORD}" > "${RESULT}"
""")


def _harness(tmp_path: Path, manifests: rules.Manifests, **kw: object) -> Harness:
    return Harness(manifests, tmp_path / "run", **kw)  # type: ignore[arg-type]


def test_task_contract(tmp_path: Path, pristine: rules.Manifests) -> None:
    out = tmp_path / "ws"
    out.mkdir()
    run = _harness(tmp_path, pristine).run_task(TOY_TASK, {"word": "$(hi) it's"}, {"out": out})
    assert run.status == "Succeeded", run.log()
    assert [s.exit_code for s in run.steps] == [3, 0]  # onError: continue went on
    assert (out / "said.txt").read_text() == "$(hi) it's from-template -a -b last"
    assert run.results == {"said": "$(hi) it's"}


def test_failing_step_stops_the_task_and_big_results_fail(tmp_path: Path, pristine: rules.Manifests) -> None:
    spec = yaml.safe_load(yaml.safe_dump(TOY_TASK))
    spec["steps"][0].pop("onError")
    run = _harness(tmp_path, pristine).run_task(spec, {"word": "x"}, {"out": tmp_path})
    assert run.status == "Failed" and [s.exit_code for s in run.steps] == [3, None]
    spec["steps"] = spec["steps"][1:]
    run = _harness(tmp_path, pristine).run_task(spec, {"word": "y" * 5000}, {"out": tmp_path})
    assert run.status == "Failed" and "LargerThanAllowedLimit" in run.reason


def test_missing_required_param_is_refused(tmp_path: Path, pristine: rules.Manifests) -> None:
    with pytest.raises(HarnessError, match="'word' not supplied"):
        _harness(tmp_path, pristine).run_task(TOY_TASK, {}, {"out": tmp_path})


TOY_PIPELINE = yaml.safe_load(r"""
params:
  - name: items
    type: array
  - name: skip
    default: "yes"
workspaces:
  - name: ws
tasks:
  - name: first
    taskSpec: &echo
      params:
        - name: item
          default: none
        - name: fail
          default: "no"
      results:
        - name: out
      workspaces:
        - name: ws
      steps:
        - name: echo
          image: x
          env:
            - name: ITEM
              value: $(params.item)
            - name: FAIL
              value: $(params.fail)
            - name: WS
              value: $(workspaces.ws.path)
            - name: RESULT
              value: $(results.out.path)
          script: |
            #!/bin/sh
            set -eu
            echo "${ITEM}" >> "${WS}/order"
            printf '%s' "${ITEM}" > "${RESULT}"
            test "${FAIL}" = no
    workspaces: [{name: ws, workspace: ws}]
  - name: guarded
    runAfter: [first]
    when: [{input: $(params.skip), operator: notin, values: ["yes"]}]
    taskSpec: *echo
    workspaces: [{name: ws, workspace: ws}]
  - name: fan
    runAfter: [guarded]
    matrix:
      params: [{name: item, value: ["$(params.items[*])"]}]
    params: [{name: fail, value: "$(tasks.first.results.out)"}]
    taskSpec: *echo
    workspaces: [{name: ws, workspace: ws}]
  - name: after-fan
    runAfter: [fan]
    taskSpec: *echo
    params: [{name: item, value: never}]
    workspaces: [{name: ws, workspace: ws}]
finally:
  - name: report
    taskSpec: *echo
    params: [{name: item, value: "$(tasks.status) $(tasks.fan.status) $(tasks.guarded.status)"}]
    workspaces: [{name: ws, workspace: ws}]
""")


def test_pipeline_order_when_matrix_finally(tmp_path: Path, pristine: rules.Manifests) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    run = _harness(tmp_path, pristine).run_pipeline(TOY_PIPELINE, {"items": ["a", "b"]}, {"ws": ws})
    # fan gets fail="none" from first's result, so both matrix branches fail
    assert (ws / "order").read_text().split("\n")[:-1] == ["none", "a", "b", "Failed Failed None"]
    assert run.status == "Failed"
    assert [r.status for r in run.runs("fan")] == ["Failed", "Failed"]
    assert run.runs("guarded")[0].status == "None" and run.runs("after-fan")[0].status == "None"


def test_init_workspace_task(tmp_path: Path, pristine: rules.Manifests) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    task = pristine.tasks["gpuflow-init-workspace"]["spec"]
    run = _harness(tmp_path, pristine).run_task(task, {}, {"shared": ws})
    assert run.status == "Succeeded", run.log()
    assert "init-workspace:" in run.log()


def _have(*modules: str) -> bool:
    return all(importlib.util.find_spec(f"gpuflow.{m}") for m in modules)


@pytest.mark.skipif(not _have("clone"), reason="gpuflow.clone is not on this branch yet")
def test_clone_task_writes_results(tmp_path: Path, pristine: rules.Manifests) -> None:
    sha = make_git_repo(tmp_path / "origin", {"notebooks/a.txt": "a"})
    ws = tmp_path / "ws"
    ws.mkdir()
    secrets = {("github-token", "token"): "s3cr3t-token"}
    task = pristine.tasks["gpuflow-clone"]["spec"]
    run = _harness(tmp_path, pristine, secrets=secrets).run_task(
        task, {"url": (tmp_path / "origin").as_uri(), "subdirectory": "src"}, {"output": ws})
    assert run.status == "Succeeded", run.log()
    assert run.results["commit-sha"] == sha and run.results["clone-status"] == "success"
    assert (ws / "src" / "notebooks" / "a.txt").read_text() == "a"
    assert (ws / "records" / "src" / "steps" / "clone.json").is_file()
    assert "s3cr3t-token" not in run.log() + "".join(run.results.values())
    # without the Secret the pod would not start: the harness fails the step as kubelet would
    bare = _harness(tmp_path / "bare", pristine).run_task(
        task, {"url": (tmp_path / "origin").as_uri()}, {"output": ws})
    assert bare.status == "Failed" and "CreateContainerConfigError" in bare.log()


@pytest.mark.skipif(not _have("download"), reason="gpuflow.download is not on this branch yet")
def test_download_task_uses_the_cache(tmp_path: Path, pristine: rules.Manifests) -> None:
    source = tmp_path / "dataset.bin"
    source.write_bytes(b"cells" * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    data, cache = tmp_path / "ws", tmp_path / "ws" / "cache"
    cache.mkdir(parents=True)
    task = pristine.tasks["gpuflow-download"]["spec"]
    params = {"url": source.as_uri(), "path": "h5/dataset.bin", "retries": "0",
              "download-args": ["--sha256", digest]}
    first = _harness(tmp_path, pristine).run_task(task, params, {"data": data, "cache": cache})
    assert first.status == "Succeeded", first.log()
    assert (data / "h5" / "dataset.bin").read_bytes() == source.read_bytes()
    (data / "h5" / "dataset.bin").unlink()
    source.unlink()  # the second run can only succeed from the cache
    second = _harness(tmp_path, pristine).run_task(task, params, {"data": data, "cache": cache})
    assert second.status == "Succeeded", second.log()
    record = json.loads((data / "records" / "download" / "steps" / "download.json").read_text())
    assert record["details"]["source"] == "cache"
    bad = _harness(tmp_path, pristine).run_task(task, {**params, "download-args": ["--sha256", "0" * 64]},
                                                {"data": data, "cache": cache})
    assert bad.status == "Failed"


def test_workspace_check_names_the_fix(tmp_path: Path, pristine: rules.Manifests) -> None:
    """Without root the Pipeline only checks the workspace, and says what to change."""
    task = pristine.tasks["gpuflow-check-workspace"]["spec"]
    writable = tmp_path / "ws"
    writable.mkdir()
    assert _harness(tmp_path, pristine).run_task(task, {}, {"shared": writable}).status == "Succeeded"
    blocked = tmp_path / "a-file"  # not writable even by root, who runs these tests in CI containers
    blocked.write_text("x")
    run = _harness(tmp_path, pristine).run_task(task, {}, {"shared": blocked})
    assert run.status == "Failed" and run.steps[0].exit_code == 2, run.log()
    assert "fsGroup" in run.log() and "anonuid" in run.log() and "Traceback" not in run.log()
