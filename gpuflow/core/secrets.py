"""Which environment variables are secrets, and keeping them from the code
gpuflow runs but did not write (the notebook's kernel, the test repo's pytest).

A variable is withheld when its name has a secret-looking word, when its
value is a URL carrying a password, when it is one that gpuflow was told
holds a secret (`--token-env`, GITHUB_TOKEN), or when its value equals one of
those secrets whatever its name. `--pass-env NAME` is the only way through.
docs/reliability.md has the table of examples; a test holds the code to it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, MutableMapping

from gpuflow.core.log import add_secret

# Matched as whole `_`-separated words, so that TIKTOKEN_CACHE_DIR and
# KEYBOARD_LAYOUT pass while HF_TOKEN and NGC_KEY do not.
SECRET_WORDS = frozenset({
    "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "CREDENTIALS", "KEY", "PAT", "APIKEY",
})
# Always a secret to gpuflow, whatever the words rule says.
ALWAYS = ("GITHUB_TOKEN",)
# Names (never values) of the variables that hold a secret gpuflow was given.
# A parent sets it so that each child step withholds and redacts the same values.
SECRET_ENV = "GPUFLOW_SECRET_ENV"
_URL_PASSWORD = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s:]*:[^/@\s]+@")


def name_looks_secret(name: str) -> bool:
    return any(word in SECRET_WORDS for word in name.upper().split("_"))


def value_looks_secret(value: str) -> bool:
    """A URL with a password in it, such as postgres://user:pw@host/db."""
    return bool(_URL_PASSWORD.match(value.strip()))


def secret_names(env: Mapping[str, str]) -> list[str]:
    """The variables gpuflow was told hold secrets, in `env`."""
    named = [n for n in env.get(SECRET_ENV, "").split(",") if n]
    return [n for n in dict.fromkeys([*ALWAYS, *named]) if env.get(n)]


def declare(name: str, env: MutableMapping[str, str] | None = None) -> None:
    """Record that the variable `name` holds a secret, for this process (its
    value is redacted from now on) and for every child started after."""
    target = os.environ if env is None else env
    names = [n for n in target.get(SECRET_ENV, "").split(",") if n]
    if name not in names:
        target[SECRET_ENV] = ",".join([*names, name])
    add_secret(target.get(name))


def register(env: Mapping[str, str] | None = None) -> None:
    """Redact, in this process, every secret a parent declared."""
    source = os.environ if env is None else env
    for name in secret_names(source):
        add_secret(source[name])


def is_withheld(name: str, value: str, known: Iterable[str]) -> bool:
    return name_looks_secret(name) or value_looks_secret(value) or (bool(value) and value in known)


def child_env(base: Mapping[str, str] | None = None, pass_env: Iterable[str] = ()) -> dict[str, str]:
    """`base` (default `os.environ`) without its secrets, except those in `pass_env`."""
    source = os.environ if base is None else base
    keep = set(pass_env)
    names = set(secret_names(source))
    known = {source[n].strip() for n in names} | {source[n] for n in names}
    return {
        k: v for k, v in source.items()
        if k in keep or (k not in names and not is_withheld(k, v, known))
    }


def withheld(base: Mapping[str, str] | None = None, pass_env: Iterable[str] = ()) -> list[str]:
    source = os.environ if base is None else base
    return sorted(set(source) - set(child_env(source, pass_env)))
