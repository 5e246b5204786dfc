"""Tokens, paths and untrusted output across the whole flow, with real servers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_git_repo
from tests.flow.test_run import OK, notebook, only_run, run_json
from tests.network.conftest import publish
from tests.security.conftest import everything_under

pytestmark = pytest.mark.usefixtures("steps_present")

SENTINEL = "gpf_SENTINEL_0123456789abcdef"


def test_sentinel_token_appears_nowhere(tmp_path: Path, git_server: Any, file_server: Any,
                                        test_repo: Path, watch_gpuflow: Any) -> None:
    srv = git_server(token=SENTINEL)
    nbs = tmp_path / "nbs"
    notebook(nbs / "a.ipynb", OK)
    make_git_repo(nbs, {"README": "notebooks\n"})
    make_git_repo(test_repo, {"README": "tests\n"})
    publish(nbs, srv.root, "nbs.git")
    publish(test_repo, srv.root, "tests.git")
    file_server.files["/data.bin"] = b"payload" * 1000
    html = tmp_path / "page.html"
    html.write_text("<html>RESULT=</html>")
    work, out = tmp_path / "work", tmp_path / "out"
    env = {"GF_TOKEN": SENTINEL}
    watched = [
        watch_gpuflow("clone", srv.url("nbs.git"), str(work / "clone"), "--token-env", "GF_TOKEN",
                      "--results-dir", str(work / "results"), "--debug", env=env),
        watch_gpuflow("stage", "--html", str(html), "--repo", srv.url("tests.git"), "--dest",
                      str(work / "stage"), "--token-env", "GF_TOKEN", "--debug", env=env),
        watch_gpuflow("download", file_server.url("/data.bin"), str(work / "data.bin"), "--token-env",
                      "GF_TOKEN", "--debug", env=env),
        watch_gpuflow("run", "--repo", srv.url("nbs.git"), "--test-repo", srv.url("tests.git"),
                      "--token-env", "GF_TOKEN", "--notebooks", "a.ipynb", "--out", str(out), "--gpu", "off",
                      "--debug", env={**env, "GITHUB_STEP_SUMMARY": str(tmp_path / "step_summary.md")}),
    ]
    printed = {}
    for i, w in enumerate(watched):
        printed[f"output of command {i}"] = w.finish()
        assert w.popen.returncode == 0, printed[f"output of command {i}"]
    run_dir = only_run(out)
    assert run_json(run_dir)["exit_code"] == 0
    for name in ("summary.json", "STEP_SUMMARY.md", "index.html"):
        assert (run_dir / "a" / name).is_file()
    configs = [p for p in (*work.rglob(".git/config"), *out.rglob(".git/config"))]
    assert len(configs) >= 3  # clone, stage and the run's checkouts
    haystacks = {**everything_under(work, out),
                 "step summary": (tmp_path / "step_summary.md").read_text(), **printed,
                 "argv": "\n".join(a for w in watched for a in w.argv)}
    assert sum(len(w.argv) for w in watched) > 10  # the watcher did see the children (git, kernels, pytest)
    leaks = [where for where, text in haystacks.items() if SENTINEL in text]
    assert leaks == [], [line for line in haystacks["argv"].splitlines() if SENTINEL in line][:3]


def test_token_pasted_into_a_url_stays_out_of_config_json(tmp_path: Path) -> None:
    from gpuflow.flow import config
    from gpuflow.run import _save_config

    url = f"https://x-access-token:{SENTINEL}@example.invalid/nbs.git"
    _save_config(tmp_path, config.resolve(cli={"repo": url, "test_repo": url}, env={}))
    saved = (tmp_path / "config.json").read_text()
    assert SENTINEL not in saved and "https://***@example.invalid/nbs.git" in saved


def test_kernel_env_and_html_are_untrusted_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuflow.run import main

    nbs = tmp_path / "nbs"
    notebook(nbs / "env.ipynb",
             "import os\nprint('SECRET:', os.environ.get('MY_API_TOKEN', 'withheld'))\n"
             "print('PASSED:', os.environ.get('PASSED_TOKEN', 'withheld'))",
             "from IPython.display import HTML\nHTML('<script>alert(\"pwned\")</script><b>bold</b>')")
    monkeypatch.setenv("MY_API_TOKEN", SENTINEL)
    monkeypatch.setenv("PASSED_TOKEN", "visible-on-purpose")
    for flags, out in (([], tmp_path / "plain"), (["--pass-env", "PASSED_TOKEN", "--sanitize-html"],
                                                   tmp_path / "strict")):
        assert main(["--repo", str(nbs), "--notebooks", "env.ipynb", "--test-repo", "", "--out", str(out),
                     "--gpu", "off", *flags]) == 0
    plain, strict = only_run(tmp_path / "plain") / "env", only_run(tmp_path / "strict") / "env"
    assert "SECRET: withheld" in (plain / "env_output.ipynb").read_text()
    assert "PASSED: withheld" in (plain / "env_output.ipynb").read_text()
    assert "PASSED: visible-on-purpose" in (strict / "env_output.ipynb").read_text()
    assert "SECRET: withheld" in (strict / "env_output.ipynb").read_text()
    # the rendered output (not the escaped source): a live script without --sanitize-html only
    assert 'alert("pwned")</script>' in (plain / "env_output.html").read_text()
    assert 'alert("pwned")</script>' not in (strict / "env_output.html").read_text()
    assert "<b>bold</b>" in (strict / "env_output.html").read_text()
    assert not [p for p, text in everything_under(tmp_path / "plain", tmp_path / "strict").items() if SENTINEL in text]


def test_clone_dest_holding_its_own_results_dir_is_refused(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from gpuflow import clone

    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    (out / "earlier.txt").write_text("kept")
    for flag in ("--results-dir", "--record-dir"):
        assert clone.main(["http://127.0.0.1:9/x.git", str(out), flag, str(out / "results")]) == 2
        assert "refusing to replace" in capsys.readouterr().err
    assert (out / "earlier.txt").read_text() == "kept"  # nothing moved or deleted
