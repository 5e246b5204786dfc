"""Secrets stay with the runner: not in the kernel, not in pytest, not in an artifact."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.flow.test_run import notebook, only_run
from tests.security.conftest import everything_under, gpuflow

DOCS = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
TOKEN = "gpf_DEPLOY_0123456789abcdef"
GH = "ghs_GITHUBTOKEN_9876543210"


def _docs_table() -> list[tuple[str, str, str]]:
    """(name, value, verdict) rows of the secret-looking names table in docs/reliability.md."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("### Secret-looking variables", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Za-z0-9_]+)` \| `([^`]*)` \| (withheld|passed) \|", section, re.M)


def test_the_code_agrees_with_the_documented_table() -> None:
    from gpuflow.core import secrets

    rows = _docs_table()
    names = {name for name, _, _ in rows}
    assert {"GITHUB_TOKEN", "HF_TOKEN", "NGC_KEY", "KAGGLE_KEY", "GH_PAT", "AWS_SECRET_ACCESS_KEY",
            "TIKTOKEN_CACHE_DIR", "TOKENIZERS_PARALLELISM", "KEYBOARD_LAYOUT", "DATABASE_URL"} <= names
    for name, value, verdict in rows:
        kept = secrets.child_env({name: value})
        assert (name in kept) == (verdict == "passed"), (name, value, verdict)


def test_token_env_github_token_and_copies_never_reach_kernel_pytest_or_artifacts(
        tmp_path: Path, test_repo: Path) -> None:
    nbs, out = tmp_path / "nbs", tmp_path / "out"
    # the notebook prints every variable it can see, as `%env` would
    notebook(nbs / "a.ipynb", "import os\nprint('RESULT=', n)\n"
             "print(sorted(os.environ))\nprint({k: v for k, v in os.environ.items() if k != 'PASSED_DEPLOY'})")
    (test_repo / "tests" / "test_env.py").write_text(
        "import os\nimport pytest\n\n@pytest.mark.single_cell\ndef test_env_printed():\n"
        "    print(dict(os.environ))\n"
        "    assert os.environ.get('LEAKED') is None, dict(os.environ)\n"
        "    assert os.environ['PASSED_DEPLOY'] == 'no', 'the passed one is ' + os.environ['PASSED_DEPLOY']\n")
    env = {"DEPLOY_BLOB": TOKEN, "COPY_OF_IT": TOKEN, "GITHUB_TOKEN": GH, "PASSED_DEPLOY": TOKEN}
    done = gpuflow("run", "--repo", str(nbs), "--test-repo", str(test_repo), "--out", str(out), "--gpu", "off",
                   "--notebooks", "a.ipynb", "--token-env", "DEPLOY_BLOB", "--pass-env", "PASSED_DEPLOY", env=env)
    run_dir = only_run(out)
    nb_dir = run_dir / "a"
    assert (nb_dir / "a_output.ipynb").is_file() and (nb_dir / "pytest_output.log").is_file(), done.stderr[-3000:]
    # the passed variable did reach pytest, which failed on it: its log and reports had it, redacted
    log = (nb_dir / "pytest_output.log").read_text()
    assert "the passed one is ***" in log, log[-3000:]
    assert "RESULT=" in (nb_dir / "a_output.ipynb").read_text()
    leaks = [where for where, text in {**everything_under(out), "stdout": done.stdout,
                                       "stderr": done.stderr}.items()
             if TOKEN in text or GH in text]
    assert leaks == [], leaks
    # the kernel saw neither the token env, its copy under another name, nor GITHUB_TOKEN
    output = (nb_dir / "a_output.ipynb").read_text()
    assert "DEPLOY_BLOB" not in output and "COPY_OF_IT" not in output and "GITHUB_TOKEN" not in output
    assert "PASSED_DEPLOY" in output  # --pass-env is the one way through


@pytest.mark.parametrize(("name", "value", "withheld"), [
    ("MY_DB", "postgres://user:pw@db.internal/prod", True),
    ("MY_DB", "postgres://db.internal/prod", False),
    ("TOKENIZERS_PARALLELISM", "false", False),
])
def test_values_that_are_urls_with_passwords_are_withheld(name: str, value: str, withheld: bool) -> None:
    from gpuflow.core import secrets

    assert (name not in secrets.child_env({name: value})) == withheld
