"""The one configuration resolver of `gpuflow run`.

Order, lowest to highest: built-in defaults < a resumed run's saved config <
the notebook repo's config file < the runner's config file < `GPUFLOW_<OPTION>`
environment variables < CLI flags. Each value remembers where it came from,
for `gpuflow run --print-config`.

A config file is `gpuflow.toml`, else `[tool.gpuflow]` in `pyproject.toml`.
The runner's is `--config FILE`, else the one where the runner stands, when
that is outside the notebook repo. The repo's own file is written by whoever
wrote the notebooks (a pull request from a fork, say), so it may only shape
the notebooks' work (`REPO_KEYS`); what touches secrets, hosts or the
runner's files is taken only from the runner's side, unless the runner passes
`--trust-repo-config`.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import difflib
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuflow.core import secrets
from gpuflow.core.errors import ConfigError
from gpuflow.core.log import log
from gpuflow.flow.select import RUN_TYPES
from gpuflow.gpu.guard import GPU_POLICIES, RMM_POLICIES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the pyproject pins tomli there
    import tomli as tomllib

# The bundled demo: a notebook and the test repo that checks it. A source
# checkout has them at its root (the source of truth, which `make run` uses);
# a built wheel carries a copy under gpuflow/_demo/ with the same layout (the
# build copies them, see setup.py), so `gpuflow run` with nothing else to go
# on runs the demo either way.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGED_DEMO = Path(__file__).resolve().parents[1] / "_demo"
BUNDLED_NOTEBOOK = "notebooks/scrna_preprocessing.ipynb"
BUNDLED_TESTS_REL = "examples/notebook-tests"
ENV_PREFIX = "GPUFLOW_"
PROFILES = ("full", "lite")
DATASET_KEYS = ("url", "dest", "sha256", "size")
CONFIG_FILES = ("gpuflow.toml", "pyproject.toml")
# What a file inside the notebook repo may set: the shape of the notebooks'
# own work, nothing that names a secret, a host or a path of the runner's.
REPO_KEYS = frozenset({"notebooks", "exclude", "parameters", "lite_parameters", "timeouts", "requires",
                       "html_name", "marker", "kernel"})
# Options that are paths: a relative one in a config file is relative to that file.
PATH_KEYS = ("repo", "test_repo", "out")
# GPUFLOW_* variables that are not options but are read elsewhere.
OTHER_ENV = frozenset({"GPUFLOW_CACHE_DIR", "GPUFLOW_PYTEST_GATE", secrets.SECRET_ENV, "GPUFLOW_GPU_OUT",
                       "GPUFLOW_GPU_REPEATS", "GPUFLOW_UID", "GPUFLOW_GID"})


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    notebooks: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    repo: str = ""
    revision: str | None = None
    token_env: str | None = None
    datasets: tuple[dict[str, Any], ...] = ()
    test_repo: str = ""
    marker: str = "single_cell"
    html_name: str = "{stem}{lite}_output.html"
    parameters: dict[str, Any] = field(default_factory=dict)
    lite_parameters: dict[str, Any] = field(default_factory=dict)
    profile: str = "full"
    kernel: str = "python3"
    gpu: str = "auto"
    rmm: str = "auto"
    rmm_pool_size: str | None = None
    timeout: float | None = None
    cell_timeout: float | None = None
    timeouts: dict[str, float] = field(default_factory=dict)
    requires: dict[str, Any] = field(default_factory=dict)
    run_type: str = "ci"
    fail_on_warnings: bool = False
    pack: bool = False
    out: str = "gpuflow-out"
    jobs: int = 1
    gpus: str = ""
    fail_fast: bool = False
    skip_tests_on_failure: bool = False
    pass_env: tuple[str, ...] = ()
    sanitize_html: bool = False
    max_cells: int = 50_000
    max_genes: int = 10_000
    seed: int = 0

    @property
    def lite(self) -> bool:
        return self.profile == "lite"

    @property
    def repo_is_local(self) -> bool:
        """A path, not a URL (`https://`, `file://`, `git@host:`): used in place, not cloned."""
        return _is_local(self.repo)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Option:
    kind: str  # str | int | float | bool | list | table | datasets
    help: str
    choices: tuple[str, ...] = ()
    cli: bool = True
    optional: bool = False  # None is a valid value


OPTIONS: dict[str, Option] = {
    "notebooks": Option("list", "notebook paths or globs inside the notebook repo (relative, or absolute "
                        "inside it); none anywhere: the bundled demo notebook and its tests"),
    "exclude": Option("list", "globs removed from `notebooks` (`*` crosses folders: '*MNMG*')"),
    "repo": Option("str", "the notebook repo: a git URL or a local path (default: the directory of "
                   "--config, else the current directory)"),
    "revision": Option("str", "branch, tag or commit of a git `repo`", optional=True),
    "token_env": Option("str", "environment variable holding a token for the git repos and the datasets "
                        "(never put a token in a URL or flag: argv is world-readable)", optional=True),
    "datasets": Option("datasets", "files to download before executing: {url, dest, sha256, size}; "
                       "dest is relative to the notebook repo", cli=False),
    "test_repo": Option("str", "the test repo (URL or path) whose pytest checks the HTML; "
                        "none: the test step is skipped"),
    "marker": Option("str", "pytest -m expression for the test repo"),
    "html_name": Option("str", "name of the HTML staged into the test repo's input/; "
                        "placeholders {stem} {lite} {profile}"),
    "parameters": Option("table", "papermill parameters for every notebook (CLI: -p NAME VALUE)"),
    "lite_parameters": Option("table", "extra parameters in the lite profile, over `parameters`", cli=False),
    "profile": Option("str", "lite: guard subsampling and _lite artifact names; full: neither",
                      choices=PROFILES),
    "kernel": Option("str", "Jupyter kernel name"),
    "gpu": Option("str", "GPU policy: auto, require (exit 4 without one), off", choices=GPU_POLICIES),
    "rmm": Option("str", "RMM allocator policy set up in the kernel", choices=RMM_POLICIES),
    "rmm_pool_size": Option("str", "RMM pool size, e.g. 8GiB", optional=True),
    "timeout": Option("float", "seconds for a whole notebook", optional=True),
    "cell_timeout": Option("float", "seconds for one cell", optional=True),
    "timeouts": Option("table", "per-notebook `timeout` overrides, keyed by path or stem", cli=False),
    "requires": Option("table", "per-notebook requirements, keyed by path or stem: "
                       "{gpus, gpu_memory, cuda, compute_capability}; unmet ones skip the notebook", cli=False),
    "run_type": Option("str", "ci, nightly or weekly: a notebook whose metadata `gpuflow.run_types` "
                       "does not list it is skipped", choices=RUN_TYPES),
    "fail_on_warnings": Option("bool", "exit 1 when a notebook's outputs hold Python warnings"),
    "pack": Option("bool", "share GPUs between notebooks by the memory they were measured to need "
                   "(without --gpus: every GPU the preflight sees)"),
    "out": Option("str", "runs go under OUT/<run-id>/"),
    "jobs": Option("int", "notebooks run at once (CPU); with --gpus, one per GPU"),
    "gpus": Option("str", "GPUs to spread notebooks over: '0,1' or 'all'; '' runs without pinning"),
    "fail_fast": Option("bool", "after a notebook fails, start no further notebooks"),
    "skip_tests_on_failure": Option("bool", "skip the test step of a notebook that failed"),
    "pass_env": Option("list", "environment variables the kernel and pytest get although they look like "
                       "secrets (TOKEN, KEY, PASSWORD...); all such variables are withheld by default"),
    "sanitize_html": Option("bool", "strip scripts and unsafe markup from the HTML report "
                            "(for notebooks whose output you do not trust)"),
    "max_cells": Option("int", "lite profile: keep at most this many cells (observations)"),
    "max_genes": Option("int", "lite profile: keep at most this many genes (variables)"),
    "seed": Option("int", "lite profile: subsampling seed"),
}
DEFAULTS = FlowConfig()


@dataclass(frozen=True, kw_only=True)
class Resolved:
    config: FlowConfig
    sources: dict[str, str]
    ignored: dict[str, str] = field(default_factory=dict)  # option -> the repo file that tried to set it

    def render(self) -> str:
        """`name = value  # source` lines (values in TOML-compatible JSON)."""
        width = max(map(len, OPTIONS))
        lines = []
        for name in OPTIONS:
            value = json.dumps(_plain(getattr(self.config, name)))
            note = f"; ignored from {self.ignored[name]} (the notebook repo's)" if name in self.ignored else ""
            lines.append(f"{name:<{width}} = {value}  # {self.sources[name]}{note}")
        return "\n".join(lines)


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper()


def flag_name(option: str) -> str:
    return "--" + option.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per CLI option, named mechanically; every default is None so
    the resolver can tell a flag given from a flag left out."""
    g = parser.add_argument_group("configuration (flags beat GPUFLOW_* env vars beat the TOML file)")
    g.add_argument("--config", type=Path, default=None,
                   help="TOML file: top-level keys, or [tool.gpuflow] in a pyproject.toml")
    g.add_argument("--print-config", action="store_true",
                   help="print the merged configuration and where each value came from, then exit")
    g.add_argument("--trust-repo-config", action="store_true",
                   help="let the notebook repo's own config file set every option, secrets and hosts "
                        "included (only for a repo whose every commit you trust)")
    for name, opt in OPTIONS.items():
        if not opt.cli:
            continue
        text = opt.help + _default_text(name)
        if name == "parameters":
            g.add_argument("-p", "--parameter", dest="parameters", nargs=2, action="append",
                           metavar=("NAME", "VALUE"), help=opt.help + " (repeat for more); VALUE is read as YAML")
        elif name == "pass_env":  # one NAME per flag, repeated, as `gpuflow execute` takes it
            g.add_argument(flag_name(name), action="append", default=None, metavar="NAME",
                           help=opt.help + " (repeat for more)")
        elif opt.kind == "bool":
            g.add_argument(flag_name(name), action=argparse.BooleanOptionalAction, default=None, help=text)
        elif opt.kind == "list":
            g.add_argument(flag_name(name), nargs="+", default=None, help=text)
        else:
            g.add_argument(flag_name(name), type=_CLI_TYPES[opt.kind], default=None,
                           choices=opt.choices or None, help=text)


def _default_text(name: str) -> str:
    # the flags' own defaults are None (so a flag left out is told from one
    # given); --help shows the built-in value instead
    value = getattr(DEFAULTS, name)
    if value in (None, "", (), {}) or isinstance(value, bool):
        return ""
    return f" (default: {str(value).replace('%', '%%')})"


def cli_values(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, converted to their option types."""
    values: dict[str, Any] = {}
    for name, opt in OPTIONS.items():
        raw = getattr(args, name, None) if opt.cli else None
        if raw is None:
            continue
        if name == "parameters":
            from gpuflow.notebook.params import bounded_yaml

            raw = {key: bounded_yaml(text, f"-p {key}") for key, text in raw}
        values[name] = raw
    return values


def resolve(
    *,
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str],
    config_file: Path | None = None,
    repo_pyproject: Path | None = None,
    saved: Mapping[str, Any] | None = None,
    saved_label: str = "resume",
    trust_repo: bool = False,
) -> Resolved:
    """Merge every source into one FlowConfig; raises ConfigError naming the
    offending key, variable or file. `config_file` is the runner's own file;
    `repo_pyproject` a file inside the notebook repo (see REPO_KEYS)."""
    layers: list[tuple[str, Mapping[str, Any]]] = [("default", DEFAULTS.to_dict())]
    if saved:
        layers.append((saved_label, _check_known(dict(saved), saved_label)))
    ignored: dict[str, str] = {}
    # the repo's own file first, the runner's file over it
    repo_layer = _repo_layer(repo_pyproject, trust_repo, ignored)
    if repo_layer is not None:
        layers.append(repo_layer)
    if config_file is not None:
        layers.append((str(config_file), read_toml(config_file)))
    layers.append(("env", _env_layer(env)))
    layers.append(("cli", dict(cli or {})))
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for label, values in layers:
        for name, value in values.items():
            merged[name] = _validate(name, value, _where(label, name))
            sources[name] = _where(label, name)
    _default_repo(merged, sources, config_file)
    return Resolved(config=_build(merged), sources=sources, ignored=ignored)


def demo_root() -> Path:
    """Where the bundled demo is: the wheel's copy, else the source checkout."""
    return PACKAGED_DEMO if (PACKAGED_DEMO / BUNDLED_NOTEBOOK).is_file() else PROJECT_ROOT


def _default_repo(merged: dict[str, Any], sources: dict[str, str], config_file: Path | None) -> None:
    """No notebooks named anywhere: the bundled demo, with its own tests. Your
    own notebooks: they live where you stand (or beside the config file in
    use), and no test repo was named for them, so none judges them."""
    if not merged["notebooks"]:
        root = demo_root()
        merged["notebooks"] = (BUNDLED_NOTEBOOK,)
        sources["notebooks"] = "default (bundled demo)"
        if not merged["repo"]:
            merged["repo"], sources["repo"] = str(root), "default (bundled demo)"
        if sources["test_repo"] == "default":
            merged["test_repo"], sources["test_repo"] = str(root / BUNDLED_TESTS_REL), "default (bundled demo)"
    elif not merged["repo"]:
        here = config_file.resolve().parent if config_file is not None else Path.cwd()
        merged["repo"] = str(here)
        sources["repo"] = f"default (the directory of {config_file})" if config_file else "default (current directory)"


def read_toml(path: Path) -> dict[str, Any]:
    """Options in a TOML file: `[tool.gpuflow]` of a pyproject.toml, else the
    top level; relative paths in it are relative to the file's directory."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    if path.name == "pyproject.toml":
        data = data.get("tool", {}).get("gpuflow", {})
    values = _check_known(data, str(path))
    for key in PATH_KEYS:
        value = values.get(key)
        if isinstance(value, str) and value and _is_local(value) and not Path(value).expanduser().is_absolute():
            values[key] = str(path.parent.absolute() / value)
    return values


def find_config(directory: Path) -> Path | None:
    """`gpuflow.toml` in `directory`, else its `pyproject.toml` when that has a `[tool.gpuflow]` table."""
    for name in CONFIG_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name != "pyproject.toml":
            return path
        try:
            if "gpuflow" in tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}):
                return path
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return path  # read_toml says what is wrong with it
    return None


def _repo_layer(repo_file: Path | None, trust_repo: bool,
                ignored: dict[str, str]) -> tuple[str, dict[str, Any]] | None:
    if repo_file is None or not repo_file.is_file():
        return None
    values = read_toml(repo_file)
    if not trust_repo:
        for key in [k for k in values if k not in REPO_KEYS]:
            del values[key]
            ignored[key] = str(repo_file)
            log.warning(f"{repo_file}: `{key}` ignored: the notebook repo may not set it; set it from the "
                        f"runner's side ({flag_name(key) if OPTIONS[key].cli else 'a --config file'}, "
                        f"{env_name(key)}, or --config FILE outside the repo)")
    return (str(repo_file), values) if values else None


def _is_local(value: str) -> bool:
    """A path, not a URL (`https://`, `file://`, `git@host:`)."""
    return "://" not in value and not re.match(r"^[\w.-]+@[\w.-]+:", value)


def unknown_env(env: Mapping[str, str]) -> list[str]:
    """One warning line per GPUFLOW_* variable that gpuflow does not read."""
    known = {env_name(n) for n in OPTIONS} | OTHER_ENV
    lines = []
    for name in sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in known):
        lines.append(f"{name} is not a gpuflow variable, so it is ignored{_did_you_mean(name, known)}")
    return lines


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, opt in OPTIONS.items():
        raw = env.get(env_name(name))
        if raw is None:
            continue
        try:
            values[name] = _ENV_PARSERS[opt.kind](raw)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{env_name(name)}={raw!r}: not a valid {opt.kind}: {exc}") from None
    return values


def _check_known(values: dict[str, Any], where: str) -> dict[str, Any]:
    for key in values:
        if key not in OPTIONS:
            fixed = key.replace("-", "_")
            hint = f" (did you mean {fixed!r}?)" if fixed in OPTIONS else _did_you_mean(key, OPTIONS)
            raise ConfigError(f"{where}: unknown option {key!r}{hint}")
    return values


def _where(label: str, name: str) -> str:
    if label == "env":
        return f"env {env_name(name)}"
    if label == "cli":
        return "cli -p" if name == "parameters" else f"cli {flag_name(name)}"
    return label


def _validate(name: str, value: Any, where: str) -> Any:
    opt = OPTIONS[name]
    if value is None and (opt.optional or opt.kind in ("table", "datasets", "list")):
        return value
    kind = opt.kind
    bad = ConfigError(f"{where}: `{name}` must be {_KIND_WORDS[kind]}, not {value!r}")
    if kind == "str":
        if not isinstance(value, str):
            raise bad
        if opt.choices and value not in opt.choices:
            raise ConfigError(f"{where}: `{name}` must be one of {', '.join(opt.choices)}, not {value!r}")
    elif kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
    elif kind == "bool" and not isinstance(value, bool):
        raise bad
    elif kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad
        value = tuple(value)
    elif kind == "table" and not isinstance(value, Mapping):
        raise bad
    elif name == "timeouts":
        for key, seconds in value.items():
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                raise ConfigError(f"{where}: timeouts.{key} must be a number of seconds, not {seconds!r}")
    elif kind == "table":
        value = _dates_as_text(value)
    elif kind == "datasets":
        value = _validate_datasets(value, where)
    return value


def _validate_datasets(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: `datasets` must be a list of tables")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: datasets[{i}] must be a table with url and dest")
        for key in item:
            if key not in DATASET_KEYS:
                raise ConfigError(f"{where}: unknown option 'datasets[{i}].{key}'")
        for key in ("url", "dest"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise ConfigError(f"{where}: datasets[{i}].{key} is required")
        if item.get("sha256") is not None and not isinstance(item["sha256"], str):
            raise ConfigError(f"{where}: datasets[{i}].sha256 must be a string of hex digits, not {item['sha256']!r}")
        size = item.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise ConfigError(f"{where}: datasets[{i}].size must be a number of bytes, not {size!r}")
        out.append(dict(item))
    return tuple(out)


def _build(merged: dict[str, Any]) -> FlowConfig:
    if merged["jobs"] < 1:
        raise ConfigError(f"`jobs` must be at least 1, not {merged['jobs']}")
    merged["parameters"] = dict(merged["parameters"] or {})
    merged["lite_parameters"] = dict(merged["lite_parameters"] or {})
    merged["timeouts"] = {str(k): float(v) for k, v in (merged["timeouts"] or {}).items()}
    merged["datasets"] = tuple(merged["datasets"] or ())
    merged["notebooks"] = tuple(merged["notebooks"] or ())
    merged["exclude"] = tuple(merged["exclude"] or ())
    merged["requires"] = dict(merged["requires"] or {})
    merged["pass_env"] = tuple(merged["pass_env"] or ())
    return FlowConfig(**merged)


def _dates_as_text(value: Any) -> Any:
    """TOML dates and times as the text they were written as: papermill keeps
    YAML dates as strings, and a date could not be saved to config.json or
    handed to execute as JSON, which would lose a run at its end."""
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _dates_as_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_dates_as_text(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _toml_value(raw: str) -> Any:
    return tomllib.loads(f"v = {raw}")["v"]


def _env_list(raw: str) -> list[str]:
    if raw.lstrip().startswith("["):
        value = _toml_value(raw)
        if not isinstance(value, list):
            raise ValueError("expected a TOML array")
        return value
    return [part for part in raw.replace(",", " ").split() if part]


def _env_bool(raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("use 1/0, true/false, yes/no or on/off")


_ENV_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str, "int": int, "float": float, "bool": _env_bool, "list": _env_list,
    "table": _toml_value, "datasets": _toml_value,
}
_CLI_TYPES: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float}
_KIND_WORDS = {
    "str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
    "list": "a list of strings", "table": "a table", "datasets": "a list of tables",
}


def timeout_for(config: FlowConfig, notebook: str, stem: str) -> float | None:
    """The notebook's own timeout override, by path or stem, else `timeout`."""
    for key in (notebook, stem):
        if key in config.timeouts:
            return config.timeouts[key]
    return config.timeout


def notebook_parameters(config: FlowConfig) -> dict[str, Any]:
    """Parameters a notebook gets under the active profile."""
    return {**config.parameters, **(config.lite_parameters if config.lite else {})}
