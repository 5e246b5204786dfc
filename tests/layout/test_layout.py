"""The package's shape, checked: steps at the top, no import cycles, and the
code that runs in someone else's process imports nothing of ours."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from gpuflow.core import errors

PACKAGE = Path(__file__).resolve().parents[2] / "gpuflow"
STEPS = {"clone", "download", "execute", "convert", "stage", "test", "summary", "run", "doctor"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, name: str, *, top_level_only: bool = False) -> set[str]:
    """gpuflow modules imported by the file (all of them, or only those at
    module level: a function-level import is how a step stays cheap)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    known = _modules()
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    return {m for m in found if m in known and m != name}


def test_top_level_holds_the_steps_only() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert top == STEPS
    assert (PACKAGE / "py.typed").is_file()
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")} == {
        "core", "notebook", "gpu", "report", "flow", "_embedded"}


def test_no_import_cycles() -> None:
    graph = {name: _imports(path, name, top_level_only=True) for name, path in _modules().items()}
    # a package's __init__ is imported with each of its modules: count that edge too
    for name in list(graph):
        parent = name.rpartition(".")[0]
        if parent and parent in graph:
            graph[name] |= {parent}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_no_cycles_through_function_level_imports_either() -> None:
    # a lazy import hides a cycle from Python, not from a reader
    graph = {name: _imports(path, name) for name, path in _modules().items()}
    for a, deps in graph.items():
        for b in deps:
            if a != "gpuflow" and b != "gpuflow" and not b.startswith(a + ".") and not a.startswith(b + "."):
                assert a not in graph.get(b, set()), f"{a} and {b} import each other"


# the one package each embedded module may import besides the standard
# library: the process it runs in (the gate is a plugin of the test repo's pytest)
HOST = {"pytest_gate.py": {"pytest"}}


@pytest.mark.parametrize("path", sorted((PACKAGE / "_embedded").glob("*.py")), ids=lambda p: p.name)
def test_embedded_code_imports_only_the_standard_library(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    stdlib = set(sys.stdlib_module_names) | {"__future__"} | HOST.get(path.name, set())
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            names = [node.module or ""]
        for name in names:
            assert name.split(".")[0] in stdlib, f"{path.name} imports {name} at module level"


def test_readme_exit_code_table_is_the_code() -> None:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", section, re.M)}
    assert documented == set(errors.EXIT_CODES)


def _string_parts(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string literal, and every literal piece of an f-string, but not
    docstrings: help text may name a file, code may not."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_only_the_artifact_layout_spells_an_artifact_file_name() -> None:
    from gpuflow.core import artifacts

    # the names with a dot: "repo" or "steps" alone are words in messages and JSON keys too
    names = {value for n in dir(artifacts) if n.isupper() and isinstance(value := getattr(artifacts, n), str)
             and "." in value and "*" not in value}
    spelled = []
    for name, path in _modules().items():
        if name == "gpuflow.core.artifacts":
            continue
        for line, text in _string_parts(ast.parse(path.read_text(encoding="utf-8"))):
            # a path built from a literal: "x.json", "/x.json", "dir/x.json"
            if text.rpartition("/")[2] in names:
                spelled.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}")
    assert not spelled, "spell these through gpuflow.core.artifacts:\n" + "\n".join(spelled)
