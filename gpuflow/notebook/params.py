"""Notebook parameters from the command line, the way papermill reads them:
`-f FILE` and `-y YAML` give mappings, `-p NAME VALUE` one value each."""
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


def yaml_mapping(text: str, where: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
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
