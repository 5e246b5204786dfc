"""Regenerate the strict JSON Schemas in this folder from Tekton's CRDs.

    python tests/tekton/schemas/regenerate.py [CRD_DIR]

CRD_DIR defaults to ../shared/tekton/crds-v1.15.0 (tektoncd/pipeline v1.15.0
`config/300-crds/`). The conversion is the one kubeconform's
openapi2jsonschema applies: every object schema that lists `properties` and is
not `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`,
so a misspelt or removed field (v1beta1 `resources`, `runafter`) is an error,
as it is for the API server under `kubectl apply --validate=strict`.
Descriptions are dropped to keep the committed files small.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_CRDS = HERE.parents[3] / "shared" / "tekton" / "crds-v1.15.0"
# (CRD file, served version) -> schema file name; only what our manifests use
WANTED = {
    ("300-task.yaml", "v1"): "task_v1.json",
    ("300-pipeline.yaml", "v1"): "pipeline_v1.json",
    ("300-pipelinerun.yaml", "v1"): "pipelinerun_v1.json",
    ("300-taskrun.yaml", "v1"): "taskrun_v1.json",
    ("300-stepaction.yaml", "v1beta1"): "stepaction_v1beta1.json",
}


def strict(node: Any) -> Any:
    """A copy of schema `node` with descriptions removed and unknown fields refused."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items() if key not in ("description", "properties")}
    if "properties" in node:
        # field names, not schema keywords: a field may well be called "description"
        out["properties"] = {name: strict(sub) for name, sub in node["properties"].items()}
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def convert(crd: dict[str, Any], version: str) -> dict[str, Any]:
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    served = {v["name"]: v for v in crd["spec"]["versions"]}
    schema = strict(served[version]["schema"]["openAPIV3Schema"])
    # pin apiVersion/kind so a v1beta1 object is not checked as v1 by mistake
    schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{group}/{version}"]}
    schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind"})
    return {"$schema": "http://json-schema.org/draft-07/schema#", **schema}


def render(crd_dir: Path) -> dict[str, str]:
    """File name -> JSON text, for every schema this folder commits."""
    texts = {}
    for (crd_file, version), name in WANTED.items():
        crd = yaml.safe_load((crd_dir / crd_file).read_text(encoding="utf-8"))
        texts[name] = json.dumps(convert(crd, version), indent=1, sort_keys=True) + "\n"
    return texts


def main(argv: list[str]) -> int:
    crd_dir = Path(argv[0]) if argv else DEFAULT_CRDS
    for name, text in render(crd_dir).items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote {name} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
