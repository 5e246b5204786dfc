"""Notebook parameters from the command line, the way papermill reads them:
`-f FILE` and `-y YAML` give mappings, `-p NAME VALUE` one value each.

YAML is read with a bounded loader. Aliases are allowed, but a document whose
aliases would expand past MAX_NODES (a few hundred bytes can name billions of
values, which then fill memory when written out as JSON) is refused, and so is
one nested deeper than Python can walk. Dates and times stay the strings they
were written as, as papermill keeps them: a datetime cannot be written to the
JSON records, and the save of a finished run must not be what fails.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gpuflow.core.errors import InputError, UsageError


def typed_value(text: str) -> Any:
    """papermill's reading of `-p` values: True/False/None, int, float, else str."""
    special = {"True": True, "False": False, "None": None}
    if text in special:
        return special[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


MAX_NODES = 100_000


def bounded_yaml(text: str, where: str) -> Any:
    """A YAML value, read safely and within bounds; bad input is a UsageError."""
    import yaml

    loader_class: Any = type("BoundedLoader", (yaml.SafeLoader,), {})
    # papermill's NoDatesSafeLoader: no implicit timestamps
    loader_class.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise UsageError(f"{where}: its aliases expand past {MAX_NODES} values; write the values out")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise UsageError(f"{where} is not valid YAML: {str(exc).splitlines()[0]} "
                         "(quote a value that starts with * & ! or %)") from None
    except RecursionError:
        raise UsageError(f"{where} is nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(node: Any, seen: dict[int, int]) -> int:
    """How many nodes the document has once every alias is written out."""
    import yaml

    known = seen.get(id(node))
    if known is not None:
        return known
    seen[id(node)] = 1  # a recursive alias counts once instead of looping
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, seen) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, seen) + _expanded_size(v, seen) for k, v in node.value)
    seen[id(node)] = total = min(total, MAX_NODES + 1)
    return total


def yaml_mapping(text: str, where: str) -> dict[str, Any]:
    data = bounded_yaml(text, where)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{where} must be a YAML mapping of parameter names to values, not {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


def parameters_from_args(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for path in args.parameters_file:
        params.update(yaml_mapping(_read(path), f"parameters file {path}"))
    for text in args.parameters_yaml:
        params.update(yaml_mapping(text, "-y YAML"))
    for name, value in args.parameters:
        params[name] = typed_value(value)
    return params


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read parameters file {path}: {getattr(exc, 'strerror', None) or exc}") from None
