from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpuflow import stage
from tests.conftest import make_git_repo


@pytest.fixture
def html(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts" / "01_scRNA_analysis_preprocessing.html"
    path.parent.mkdir()
    path.write_text("<!DOCTYPE html><html><body>gpuflow-scrna: done</body></html>")
    return path


@pytest.fixture
def test_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "test-repo"
    (repo / "input" / "old").mkdir(parents=True)
    (repo / "input" / "old" / "stale.html").write_text("stale")
    (repo / "input" / "stale.html").write_text("stale")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_x.py").write_text("def test_x(): pass\n")
    return repo


def test_copies_a_local_repo_and_places_the_html_at_a_nested_name(html: Path, test_repo: Path, tmp_path: Path) -> None:
    dest = tmp_path / "staged"
    name = "single_cell_analysis/v1.2.0/std_01_scRNA_analysis_preprocessing.html"
    assert stage.main(["--html", str(html), "--repo", str(test_repo), "--dest", str(dest), "--name", name]) == 0
    assert (dest / "input" / name).read_text() == html.read_text()
    assert sorted(p.name for p in (dest / "input").iterdir()) == ["single_cell_analysis"]  # stale files gone
    assert (dest / "tests" / "test_x.py").is_file()
    assert (test_repo / "input" / "stale.html").is_file()  # the source is never touched
    rec = json.loads((html.parent / "steps" / "stage.json").read_text())
    assert rec["status"] == "success" and rec["details"]["target"].endswith(name)
    # a second run replaces our own copy
    result = stage.stage(html, str(test_repo), dest)
    assert result.target == dest / "input" / html.name and "<table>" in result._repr_html_()


@pytest.mark.parametrize("name", ["../escape.html", "/tmp/abs.html", "a/../../x.html"])
def test_a_name_escaping_the_input_dir_is_exit_2_and_deletes_nothing(
    html: Path, test_repo: Path, name: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert stage.main(["--html", str(html), "--repo", str(test_repo), "--dest", str(test_repo.parent / "d"),
                       "--name", name]) == 2
    assert "gpuflow.stage: " in capsys.readouterr().err
    with pytest.raises(Exception) as info:
        stage.place_html(html, test_repo, name=name)
    assert getattr(info.value, "exit_code", None) == 2
    assert (test_repo / "input" / "stale.html").is_file()


def test_a_symlink_planted_in_input_is_removed_not_followed(html: Path, test_repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    os.symlink(outside, test_repo / "input" / "link-to-outside")
    os.symlink(outside / "precious.txt", test_repo / "input" / "file-link")
    target = stage.place_html(html, test_repo)
    assert target.is_file()
    assert (outside / "precious.txt").read_text() == "keep me"
    assert not (test_repo / "input" / "link-to-outside").exists()


def test_input_that_is_a_symlink_is_refused(html: Path, test_repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    os.symlink(outside, test_repo / "elsewhere")
    for link_target in (outside, test_repo / "elsewhere"):
        (test_repo / "inputlink").unlink(missing_ok=True)
        os.symlink(link_target, test_repo / "inputlink")
        with pytest.raises(Exception) as info:
            stage.place_html(html, test_repo, input_dir="inputlink")
        assert getattr(info.value, "exit_code", None) == 2
    assert (outside / "precious.txt").read_text() == "keep me"


def test_missing_input_dir_is_created(html: Path, tmp_path: Path) -> None:
    repo = tmp_path / "bare"
    repo.mkdir()
    target = stage.place_html(html, repo, input_dir="data/input")
    assert target == repo / "data" / "input" / html.name and target.is_file()


def test_refuses_to_overwrite_a_foreign_nonempty_dest(html: Path, test_repo: Path, tmp_path: Path) -> None:
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "work.txt").write_text("mine")
    assert stage.main(["--html", str(html), "--repo", str(test_repo), "--dest", str(dest)]) == 2
    assert (dest / "work.txt").read_text() == "mine"


def test_clones_a_git_url(html: Path, tmp_path: Path) -> None:
    pytest.importorskip("gpuflow.clone", reason="gpuflow.clone (h/network) is not merged here")
    origin = tmp_path / "origin"
    sha = make_git_repo(origin, {"input/.gitkeep": "", "tests/test_x.py": "def test_x(): pass\n"})
    dest = tmp_path / "cloned"
    result = stage.stage(html, origin.as_uri(), dest, name="nb.html")
    assert result.commit == sha
    assert (dest / "input" / "nb.html").is_file() and not (dest / "input" / ".gitkeep").exists()
