"""The EventListener's CEL filter and overlay, evaluated on GitHub-shaped
payloads with cel-python (Triggers' `header.match` supplied here)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import tekton_rules as rules

celpy = pytest.importorskip("celpy", reason="cel-python is not installed (pip install cel-python)")


def _params(m: rules.Manifests) -> dict[str, Any]:
    listener = next(d for d in m.docs if d.get("kind") == "EventListener")
    cel = next(i for i in listener["spec"]["triggers"][0]["interceptors"] if i["ref"]["name"] == "cel")
    return {p["name"]: p["value"] for p in cel["params"]}


def _evaluate(expression: str, event: str, body: dict[str, Any]) -> Any:
    def match(headers: Any, name: Any, value: Any) -> Any:
        return celpy.celtypes.BoolType(headers.get(celpy.celtypes.StringType(name)) == value)
    env = celpy.Environment()
    program = env.program(env.compile(expression), functions={"match": match})
    return program.evaluate({"header": celpy.json_to_cel({"X-GitHub-Event": event}),
                             "body": celpy.json_to_cel(body)})


def _push(ref: str, message: str = "tidy", files: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"ref": ref, "deleted": False, "after": "c0ffee", "head_commit": {"message": message},
            "commits": [{"added": [], "modified": list(files), "removed": []}]}


REPO = {"full_name": "NVIDIA-AI-Blueprints/single-cell-analysis-blueprint"}
PAYLOADS = Path(__file__).resolve().parent / "payloads"


def _pr(base: str, title: str = "tidy") -> dict[str, Any]:
    return {"action": "synchronize", "repository": REPO, "pull_request": {
        "base": {"ref": base, "repo": REPO}, "title": title, "labels": [], "head": {"sha": "beef", "repo": REPO}}}


def _payload(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / f"{name}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(("event", "body", "runs"), [
    ("push", _push("refs/heads/main"), True),
    ("push", _push("refs/heads/develop"), True),
    ("push", _push("refs/heads/feature"), False),
    ("push", _push("refs/heads/feature", "speed up [gpu] cells"), True),
    ("push", _push("refs/heads/feature", "[notebook] new plot"), True),
    ("push", _push("refs/heads/feature", files=("notebooks/01.ipynb",)), True),
    ("push", _push("refs/heads/feature", files=("docs/notebooks.md",)), False),
    ("push", {**_push("refs/heads/main"), "deleted": True}, False),
    ("pull_request", _pr("main"), True),
    ("pull_request", _pr("feature"), False),
    ("pull_request", _pr("feature", "try [gpu]"), True),
    ("pull_request", {**_pr("main"), "action": "closed"}, False),
])
def test_filter(pristine: rules.Manifests, event: str, body: dict[str, Any], runs: bool) -> None:
    assert bool(_evaluate(_params(pristine)["filter"], event, body)) is runs


def test_revision_overlay(pristine: rules.Manifests) -> None:
    overlay = next(o for o in _params(pristine)["overlays"] if o["key"] == "revision")["expression"]
    assert _evaluate(overlay, "push", _push("refs/heads/main")) == "c0ffee"
    assert _evaluate(overlay, "pull_request", _pr("main")) == "beef"


# Real-shaped payloads: who may run code on the GPUs, and events with holes in them.
# The filter must answer true or false, never fail: Triggers drops an event
# whose filter raises, with only a log line to say so.
@pytest.mark.parametrize(("event", "name", "change", "runs"), [
    ("pull_request", "pull_request_same_repo", {}, True),
    ("pull_request", "pull_request_fork", {}, False),
    ("pull_request", "pull_request_fork", {"title": "[gpu] please run me"}, False),
    ("pull_request", "pull_request_fork_labelled", {}, True),
    ("pull_request", "pull_request_fork_labelled", {"action": "synchronize"}, True),  # the label stays on
    ("pull_request", "pull_request_fork_labelled", {"label": {"name": "documentation"}}, False),
    ("pull_request", "pull_request_fork", {"head_repo": None}, False),  # the fork was deleted
    ("push", "push_head_commit_null", {}, False),
    ("push", "push_head_commit_null", {"ref": "refs/heads/main"}, True),
])
def test_filter_on_real_shaped_payloads(pristine: rules.Manifests, event: str, name: str,
                                        change: dict[str, Any], runs: bool) -> None:
    body = copy.deepcopy(_payload(name))
    for key, value in change.items():
        if key == "title":
            body["pull_request"]["title"] = value
        elif key == "head_repo":
            body["pull_request"]["head"]["repo"] = value
        else:
            body[key] = value
    result = _evaluate(_params(pristine)["filter"], event, body)
    assert isinstance(result, celpy.celtypes.BoolType), result  # an answer, not an evaluation error
    assert bool(result) is runs


def test_overlay_on_a_fork_pull_request(pristine: rules.Manifests) -> None:
    overlay = next(o for o in _params(pristine)["overlays"] if o["key"] == "revision")["expression"]
    body = _payload("pull_request_fork_labelled")
    assert _evaluate(overlay, "pull_request", body) == body["pull_request"]["head"]["sha"]
