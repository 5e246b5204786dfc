"""Run Tekton Tasks and Pipelines the way Tekton would, without a cluster.

Test code, not product. It follows the contract gpuflow's manifests rely on
(tektoncd/pipeline pkg/pod/script.go, pkg/reconciler/taskrun/resources/apply.go,
docs/variables.md, docs/pipelines.md) and ignores what it cannot honour here:
images (the current environment runs the steps, with the venv's python and
entrypoints/ on PATH), securityContext and resource requests.

- stepTemplate is merged into each step (step fields win, env by name);
- params: the given value else the default; a missing required param fails;
  `$(params.x)`, `$(params['x'])` and `$(params.a[*])` (list items only) are
  substituted, as are `$(workspaces.w.path|bound|claim)`, `$(results.r.path)`,
  `$(context.*)`; a leftover `$(params...` is an error;
- Tekton's paths are mapped to temp dirs: `/workspace/<w>` to the bound
  workspace (plus subPath), `/tekton/results` to the TaskRun's results dir,
  `/home/rapids` to a temp home;
- a script without `#!` gets `#!/bin/sh` + `set -e`; args follow it as "$@";
- `onError: continue` records the exit code and goes on; otherwise the first
  failing step fails the TaskRun and later steps do not run;
- results: the declared files, at most 4096 bytes in all (the termination
  message), no trailing newline needed;
- Pipelines: graph order from runAfter and result references, `when`
  (in/notin) skipping only the guarded task, matrix fan-out (cartesian),
  optional workspaces left unbound, `$(context.pipelineRun.name)` in a
  pipeline task's workspace subPath,
  stop scheduling after a failure, then `finally` with `$(tasks.status)` and
  `$(tasks.<t>.status)`; pipeline results from `$(tasks|finally...)`.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tekton_rules as rules

ROOT = Path(__file__).resolve().parents[2]
RESULTS_LIMIT = 4096
STEP_TIMEOUT = 900.0
VAR = re.compile(r"\$\(([^()]*)\)")
ARRAY_ITEM = re.compile(r"""^\$\(params(?:\.([\w.-]+)|\[['"]([^'"]+)['"]\])\[\*\]\)$""")


class HarnessError(Exception):
    """The manifest would be refused by Tekton (not a failing step)."""


@dataclass
class StepRun:
    name: str
    exit_code: int | None  # None: not run
    output: str = ""


@dataclass
class TaskRun:
    name: str
    status: str  # Succeeded | Failed | None (skipped)
    params: dict[str, Any] = field(default_factory=dict)
    steps: list[StepRun] = field(default_factory=list)
    results: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    def log(self) -> str:
        return "\n".join(f"--- {s.name} (exit {s.exit_code})\n{s.output}" for s in self.steps)


@dataclass
class PipelineRun:
    status: str  # Succeeded | Completed | Failed
    tasks: dict[str, list[TaskRun]]
    results: dict[str, str]

    def runs(self, task: str) -> list[TaskRun]:
        return self.tasks.get(task, [])

    def log(self) -> str:
        return "\n".join(f"=== {r.name} {r.status} {r.reason}\n{r.log()}"
                         for runs in self.tasks.values() for r in runs)


@dataclass
class Harness:
    manifests: rules.Manifests
    root: Path
    secrets: Mapping[tuple[str, str], str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------ TaskRuns
    def run_task(self, spec: dict[str, Any], params: Mapping[str, Any], workspaces: Mapping[str, Path],
                 *, name: str = "taskrun", timeout: float | None = None) -> TaskRun:
        """One TaskRun of `spec`, with workspaces bound to real directories."""
        run = TaskRun(name=name, status="Succeeded", params=_resolve_params(spec, params))
        (self.root / "tekton").mkdir(parents=True, exist_ok=True)
        results_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root / "tekton")) / "results"
        results_dir.mkdir()
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        declared_ws = {w["name"]: w for w in spec.get("workspaces") or []}
        paths = {"/tekton/results": results_dir, "/home/rapids": home}
        for ws_name, ws in declared_ws.items():
            if ws_name not in workspaces and not ws.get("optional"):
                raise HarnessError(f"{name}: workspace {ws_name!r} is not bound")
            if ws_name in workspaces:
                paths[ws.get("mountPath") or f"/workspace/{ws_name}"] = Path(workspaces[ws_name])
        variables = self._task_variables(spec, run.params, workspaces, declared_ws, name)
        for step in spec.get("steps") or []:
            merged = rules.merged_step(spec, step)
            if run.status == "Failed":
                run.steps.append(StepRun(step["name"], None))
                continue
            exit_code, output = self._run_step(merged, variables, run.params, paths, timeout)
            run.steps.append(StepRun(step["name"], exit_code, output))
            if exit_code != 0 and merged.get("onError") != "continue":
                run.status, run.reason = "Failed", f"step {step['name']} exited {exit_code}"
        run.results = self._read_results(spec, results_dir, run)
        return run

    def _task_variables(self, spec: dict[str, Any], params: Mapping[str, Any], workspaces: Mapping[str, Path],
                        declared_ws: dict[str, Any], name: str) -> dict[str, str]:
        variables = {f"params.{k}": v for k, v in params.items() if isinstance(v, str)}
        variables |= {f"params['{k}']": v for k, v in params.items() if isinstance(v, str)}
        variables |= {f'params["{k}"]': v for k, v in params.items() if isinstance(v, str)}
        for ws_name, ws in declared_ws.items():
            bound = ws_name in workspaces
            variables[f"workspaces.{ws_name}.path"] = (ws.get("mountPath") or f"/workspace/{ws_name}") if bound else ""
            variables[f"workspaces.{ws_name}.bound"] = "true" if bound else "false"
            variables[f"workspaces.{ws_name}.claim"] = ""
        for res in spec.get("results") or []:
            variables[f"results.{res['name']}.path"] = f"/tekton/results/{res['name']}"
        variables |= {"context.taskRun.name": name, "context.taskRun.namespace": "default",
                      "context.taskRun.uid": "0", "context.task.name": name, "context.task.retry-count": "0"}
        for step in spec.get("steps") or []:
            variables[f"steps.step-{step['name']}.exitCode.path"] = f"/tekton/steps/step-{step['name']}/exitCode"
        return variables

    def _run_step(self, step: dict[str, Any], variables: Mapping[str, str], params: Mapping[str, Any],
                  paths: Mapping[str, Path], timeout: float | None) -> tuple[int, str]:
        env = self._base_env(paths)
        for item in step.get("env") or []:
            if "valueFrom" in item:
                ref = item["valueFrom"].get("secretKeyRef") or {}
                key = (substitute(ref.get("name", ""), variables), ref.get("key", ""))
                if key in self.secrets:
                    env[item["name"]] = self.secrets[key]
                elif not ref.get("optional"):
                    return 1, f"CreateContainerConfigError: secret {key} not found"
                continue
            env[item["name"]] = _map_paths(substitute(str(item.get("value", "")), variables), paths)
        args = [_map_paths(a, paths) for a in expand_list(step.get("args") or [], variables, params)]
        script = substitute(step.get("script", ""), variables)
        if not script:
            raise HarnessError(f"step {step['name']}: only script steps are run by this harness")
        if not script.startswith("#!"):
            script = "#!/bin/sh\nset -e\n" + script
        script_file = paths["/tekton/results"].parent / f"script-{step['name']}"
        script_file.write_text(_map_paths(script, paths), encoding="utf-8")
        script_file.chmod(0o755)
        cwd = _map_paths(substitute(step.get("workingDir", ""), variables), paths) or str(self.root)
        limit = min(filter(None, [timeout, _seconds(step.get("timeout")), STEP_TIMEOUT]))
        try:
            done = subprocess.run([str(script_file), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=limit)
        except subprocess.TimeoutExpired as exc:
            return 124, f"step timed out after {limit}s\n{exc.stdout or ''}"
        return done.returncode, done.stdout

    def _base_env(self, paths: Mapping[str, Path]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        bins = [str(ROOT / "entrypoints"), str(Path(sys.executable).parent)]
        env["PATH"] = os.pathsep.join([*bins, env.get("PATH", "")])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        env["HOME"] = str(paths["/home/rapids"])
        return env

    def _read_results(self, spec: dict[str, Any], results_dir: Path, run: TaskRun) -> dict[str, str]:
        results = {}
        for res in spec.get("results") or []:
            path = results_dir / res["name"]
            if path.is_file():
                results[res["name"]] = path.read_text(encoding="utf-8")
        size = sum(len(v.encode()) for v in results.values())
        if size > RESULTS_LIMIT:
            run.status, run.reason = "Failed", f"TaskRunResultLargerThanAllowedLimit: {size} bytes"
        return results

    # -------------------------------------------------------- PipelineRuns
    def run_pipelinerun(self, doc: dict[str, Any]) -> PipelineRun:
        spec = doc["spec"]
        pipeline = self.manifests.resolve_pipeline(doc)
        if pipeline is None:
            raise HarnessError("PipelineRun names no known Pipeline")
        bindings = {}
        for ws in spec.get("workspaces") or []:
            path = self.root / "volumes" / ws["name"]
            path.mkdir(parents=True, exist_ok=True)
            bindings[ws["name"]] = path / ws.get("subPath", "")
        given = {p["name"]: p["value"] for p in spec.get("params") or []}
        return self.run_pipeline(pipeline, given, bindings)

    def run_pipeline(self, spec: dict[str, Any], params: Mapping[str, Any],
                     workspaces: Mapping[str, Path]) -> PipelineRun:
        """Run a Pipeline spec with bound pipeline workspaces."""
        values = _resolve_params(spec, params)
        variables = {f"params.{k}": v for k, v in values.items() if isinstance(v, str)}
        variables["context.pipelineRun.name"] = "harness-run"
        tasks = {t["name"]: t for t in spec.get("tasks") or []}
        edges = {n: set(t.get("runAfter") or []) | _result_deps(t) for n, t in tasks.items()}
        order = rules.graph_order(edges)
        if order is None:
            raise HarnessError("the task graph has a cycle")
        done: dict[str, list[TaskRun]] = {}
        failed = False
        for name in order:
            pt = tasks[name]
            if failed or any(_status(done.get(d, [])) in ("Failed", "None") for d in _result_deps(pt)):
                done[name] = [TaskRun(name, "None", reason="skipped: the pipeline is stopping" if failed
                                      else "skipped: a result it needs is missing")]
                continue
            done[name] = self._run_pipeline_task(pt, variables, values, done, workspaces)
            failed = failed or _status(done[name]) == "Failed"
        statuses = [_status(done[n]) for n in order]
        aggregate = "Failed" if "Failed" in statuses else "Completed" if "None" in statuses else "Succeeded"
        final_vars = {**variables, "tasks.status": aggregate}
        final_vars |= {f"tasks.{n}.status": _status(done[n]) for n in order}
        for pt in spec.get("finally") or []:
            done[pt["name"]] = self._run_pipeline_task(pt, final_vars, values, done, workspaces)
        overall = "Failed" if any(_status(r) == "Failed" for r in done.values()) else aggregate
        results = {r["name"]: substitute(str(r["value"]), _result_vars(done), strict=False)
                   for r in spec.get("results") or []}
        return PipelineRun(status=overall, tasks=done, results=results)

    def _run_pipeline_task(self, pt: dict[str, Any], variables: Mapping[str, str], values: Mapping[str, Any],
                           done: Mapping[str, list[TaskRun]], workspaces: Mapping[str, Path]) -> list[TaskRun]:
        name = pt["name"]
        scope = {**variables, **_result_vars(done)}
        for cond in pt.get("when") or []:
            value = substitute(cond["input"], scope)
            wanted = expand_list(cond["values"], scope, values)
            if (value in wanted) != (cond["operator"] == "in"):
                return [TaskRun(name, "None", reason=f"skipped: when {cond['input']} {cond['operator']} {wanted}")]
        task = self.manifests.resolve_task(pt)
        if task is None:
            raise HarnessError(f"{name}: unknown Task")
        base = {p["name"]: _param_value(p["value"], scope, values) for p in pt.get("params") or []}
        matrix = [(p["name"], expand_list(p["value"], scope, values) if isinstance(p["value"], list)
                   else _array_result(p["value"], scope))
                  for p in (pt.get("matrix") or {}).get("params") or []]
        combos = [dict(zip([m[0] for m in matrix], combo, strict=False)) for combo in itertools.product(*[m[1] for m in matrix])]
        bound = {}
        for ws in pt.get("workspaces") or []:
            if ws["workspace"] not in workspaces:
                continue  # an optional workspace the run left unbound; run_task refuses a required one
            path = Path(workspaces[ws["workspace"]]) / substitute(ws.get("subPath", ""), variables)
            path.mkdir(parents=True, exist_ok=True)
            bound[ws["name"]] = path
        timeout = _seconds(pt.get("timeout"))
        return [self.run_task(task, {**base, **combo}, bound, name=f"{name}-{i}" if matrix else name,
                              timeout=timeout)
                for i, combo in enumerate(combos)]


# ------------------------------------------------------------------ helpers

def substitute(text: str, variables: Mapping[str, str], *, strict: bool = True) -> str:
    """Replace Tekton variables; shell `$(cmd)` is left alone, as Tekton does."""
    def one(m: re.Match[str]) -> str:
        key = m.group(1)
        if key in variables:
            return variables[key]
        if strict and re.match(r"(params|workspaces|results|tasks|finally|context)[.\[]", key):
            raise HarnessError(f"unresolved Tekton variable $({key})")
        return m.group(0)
    return VAR.sub(one, text)


def expand_list(items: list[Any], variables: Mapping[str, str], params: Mapping[str, Any]) -> list[str]:
    """A list value: "$(params.a[*])" items expand in place."""
    out: list[str] = []
    for item in items:
        m = ARRAY_ITEM.match(str(item))
        if m:
            value = params.get(m.group(1) or m.group(2))
            if not isinstance(value, list):
                raise HarnessError(f"{item}: not an array param")
            out += [str(v) for v in value]
        else:
            out.append(substitute(str(item), variables))
    return out


def _array_result(ref: str, variables: Mapping[str, str]) -> list[str]:
    """`$(tasks.T.results.R[*])`: a whole array result, which a Task writes as a JSON array."""
    m = re.fullmatch(r"\$\((tasks\.[^.)]+\.results\.[^.)\[]+)\[\*\]\)", ref)
    if m is None or m.group(1) not in variables:
        raise HarnessError(f"{ref}: not a whole array result of a finished task")
    value = json.loads(variables[m.group(1)])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HarnessError(f"{ref}: the result is not a JSON array of strings")
    return value


def _param_value(value: Any, variables: Mapping[str, str], params: Mapping[str, Any]) -> Any:
    return expand_list(value, variables, params) if isinstance(value, list) else substitute(str(value), variables)


def _resolve_params(spec: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for p in spec.get("params") or []:
        if p["name"] in given:
            value = given[p["name"]]
        elif "default" in p:
            value = p["default"]
        else:
            raise HarnessError(f"required param {p['name']!r} not supplied")
        kind = p.get("type", "string")
        if kind == "array" and not isinstance(value, list) or kind == "string" and isinstance(value, (list, dict)):
            raise HarnessError(f"param {p['name']!r}: {type(value).__name__} given for {kind}")
        # Tekton reads scalars as strings (ParamValue.UnmarshalJSON): true -> "true"
        values[p["name"]] = [str(v) for v in value] if isinstance(value, list) else (
            str(value).lower() if isinstance(value, bool) else str(value))
    return values


def _map_paths(text: str, paths: Mapping[str, Path]) -> str:
    for prefix in sorted(paths, key=len, reverse=True):
        text = re.sub(re.escape(prefix) + r"(?=/|$|[^\w.-])", lambda _m, p=prefix: str(paths[p]), text)
    return text


def _result_deps(pt: dict[str, Any]) -> set[str]:
    texts = " ".join(rules._strings({k: pt.get(k) for k in ("params", "matrix", "when")}))
    return {t for scope, t, _, _ in rules.TASK_RESULT_REF.findall(texts) if scope == "tasks"}


def _result_vars(done: Mapping[str, list[TaskRun]]) -> dict[str, str]:
    out = {}
    for name, runs in done.items():
        if len(runs) == 1:
            for key, value in runs[0].results.items():
                out[f"tasks.{name}.results.{key}"] = value
                out[f"finally.{name}.results.{key}"] = value
    return out


def _status(runs: list[TaskRun]) -> str:
    states = {r.status for r in runs}
    return "Failed" if "Failed" in states else "None" if states == {"None"} else "Succeeded"


def _seconds(duration: Any) -> float | None:
    return rules._seconds(str(duration)) or None if duration else None
