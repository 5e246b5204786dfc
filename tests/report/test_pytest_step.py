"""gpuflow.test against real pytest runs, offline: the current interpreter (--no-install)."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gpuflow import convert, stage
from gpuflow import test as testrun
from gpuflow.core import artifacts, record
from gpuflow.report.junit import TestDetails
from tests.report.conftest import executed_notebook

TESTS = '''
import pytest
pytestmark = pytest.mark.single_cell

def test_ok(): pass
def test_ok_too(): pass
def test_bad(): assert 1 == 2
@pytest.mark.xfail(reason="known")
def test_xfail(): assert 0
@pytest.mark.xfail(reason="fixed?")
def test_xpass(): pass
def test_skip(): pytest.skip("not here")
@pytest.fixture
def broken(): raise RuntimeError("setup")
def test_error(broken): pass
'''


def repo_with(tmp_path: Path, files: dict[str, str]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pytest.ini").write_text("[pytest]\naddopts = --this-flag-does-not-exist\n"
                                     "markers =\n    single_cell: x\n")
    for name, text in files.items():
        (repo / name).write_text(text)
    return repo


def test_counts_match_the_junit_xml(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, {"test_mix.py": TESTS})
    out = tmp_path / "out"
    result = testrun.run_tests(repo, marker="single_cell", out_dir=out, install=False)
    assert result.exit_code == 1
    assert (result.passed, result.failed, result.errors, result.skipped, result.xfailed, result.xpassed) == \
        (2, 1, 1, 1, 1, 1)
    assert sorted(result.failing) == ["test_mix::test_bad", "test_mix::test_error"]
    for name in artifacts.TEST_OUTPUTS:
        assert (out / name).is_file(), name
    suite = ET.parse(out / "pytest_results.xml").getroot().find("testsuite")
    assert suite is not None
    assert int(suite.get("tests", 0)) == result.total
    assert int(suite.get("failures", 0)) == result.failed and int(suite.get("errors", 0)) == result.errors
    assert int(suite.get("skipped", 0)) == result.skipped + result.xfailed
    assert "1 xpassed" in (out / "pytest_output.log").read_text()
    assert "<table>" in result._repr_html_()


def test_cli_exit_codes_and_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = repo_with(tmp_path, {"test_ok.py": "import pytest\n@pytest.mark.single_cell\ndef test_ok(): pass\n"})
    out = tmp_path / "out"
    assert testrun.main([str(repo), "--marker", "single_cell", "--out-dir", str(out), "--no-install"]) == 0
    rec = json.loads((out / "steps" / "test.json").read_text())
    assert rec["details"]["passed"] == 1
    # what the step wrote is what its typed view reads back
    typed = record.read(out, "test")
    assert typed is not None
    details = typed.view(TestDetails)
    assert (details.passed, details.failing, details.out_dir) == (1, (), str(out.resolve()))
    # no test matches the marker: pytest's 5
    assert testrun.main([str(repo), "--marker", "gpu_only", "--out-dir", str(out), "--no-install"]) == 5
    assert "collected no tests" in capsys.readouterr().err
    # a test module that does not import: a collection error, 2
    (repo / "test_broken.py").write_text("import nonexistent_module_xyz\n")
    assert testrun.main([str(repo), "--marker", "single_cell", "--out-dir", str(out), "--no-install"]) == 2


def test_failing_tests_are_exit_1(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, {"test_mix.py": TESTS})
    assert testrun.main([str(repo), "--marker", "single_cell", "--out-dir", str(tmp_path / "o"), "--no-install"]) == 1


def test_current_interpreter_used_when_requirements_are_met(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, {"requirements.txt": "pytest>=7\n# a comment\n"})
    assert testrun.satisfied([repo / "requirements.txt"])
    (repo / "requirements.txt").write_text("surely-not-installed-pkg-xyz==1.0\n")
    assert not testrun.satisfied([repo / "requirements.txt"])


def test_no_install_names_a_missing_requirement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without installing, a requirement the interpreter lacks is one line, not an ImportError in pytest."""
    repo = repo_with(tmp_path, {"test_ok.py": "import pytest\n@pytest.mark.single_cell\ndef test_ok(): pass\n",
                                "requirements.txt": "pytest>=7\n-e ./vendored\nsurely-not-installed-pkg-xyz==1.0\n"})
    out = tmp_path / "out"
    assert testrun.main([str(repo), "--marker", "single_cell", "--out-dir", str(out), "--no-install"]) == 2
    err = capsys.readouterr().err
    assert "missing test dependency surely-not-installed-pkg-xyz==1.0; bake it into the image" in err
    assert "vendored" not in err and "Traceback" not in err  # an editable line cannot be judged, so it is not blamed
    assert testrun.unmet([repo / "requirements.txt"]) == ["surely-not-installed-pkg-xyz==1.0"]


@pytest.mark.parametrize("fail", [False, True])
def test_bundled_suite_on_staged_html(tmp_path: Path, suite_copy: Path, fail: bool) -> None:
    nb = executed_notebook(tmp_path / "scrna_preprocessing_output.ipynb", fail=fail)
    html = convert.convert_notebook(nb).html
    stage.place_html(html, suite_copy, name="single_cell_analysis/std_scrna_preprocessing.html")
    result = testrun.run_tests(suite_copy, marker="single_cell", out_dir=tmp_path / "out", install=False)
    if fail:
        assert result.exit_code == 1
        assert {f.split("::")[1].split("[")[0] for f in result.failing} == \
            {"test_marker_lines_present", "test_no_error_outputs"}
    else:
        assert (result.exit_code, result.passed, result.failed) == (0, 5, 0), result


def test_prepare_env_uses_this_interpreter_when_it_has_everything(tmp_path: Path) -> None:
    import sys

    repo = repo_with(tmp_path, {"requirements.txt": "pytest\n"})
    assert testrun.python_for(repo) == sys.executable  # nothing to install: offline
    assert testrun.python_for(repo, python="/some/python") == "/some/python"


def test_bundled_suite_fails_on_an_empty_input_dir(tmp_path: Path, suite_copy: Path) -> None:
    result = testrun.run_tests(suite_copy, marker="single_cell", out_dir=tmp_path / "out", install=False)
    assert result.exit_code == 1 and result.failing == ("testcases.test_scrna_notebook::test_input_has_html",)
