"""The run page says what happened, and a browser shows it."""
from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.contact.helpers import gpuflow, only_run_dir, write_notebook
from tests.report.test_summary import _chromium, _console, _Links, _load


@pytest.mark.chromium
def test_run_page_shows_steps_tests_reasons_and_links(tmp_path: Path) -> None:
    exe = _chromium()
    write_notebook(tmp_path / "good.ipynb", "print('ok')")
    write_notebook(tmp_path / "bad&<x>.ipynb", "raise ValueError('<script>alert(1)</script>')")
    (tmp_path / "checks" / "tests").mkdir(parents=True)
    (tmp_path / "checks" / "pytest.ini").write_text("[pytest]\nmarkers =\n    single_cell: x\n")
    (tmp_path / "checks" / "tests" / "test_a.py").write_text(
        "import pytest\n\n@pytest.mark.single_cell\ndef test_x():\n    pass\n")
    done = gpuflow("run", "--gpu", "off", "--notebooks", "good.ipynb", "bad&<x>.ipynb", "--test-repo", "checks",
                   cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "gpuflow-out")
    page = run_dir / "index.html"
    html = page.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)" in html
    dom, stderr = _load(exe, page, tmp_path / "profile")
    assert not _console(stderr), _console(stderr)
    for words in ("success", "failed", "1 passed, 0 failed", "raised ValueError", "Reason"):
        assert words in dom, words
    assert "(see " not in dom  # the reason is one short line; the files are linked
    links = _Links()
    links.feed(dom)
    wanted = {"good/good_output.html", "good/pytest_report.html", "good/papermill.log", "good/pytest_output.log",
              "good/index.html", "bad&<x>/index.html"}
    got = {unquote(u) for u in links.urls}
    assert wanted <= got, wanted - got
    for url in links.urls:
        assert "://" not in url and not url.startswith("/"), url
        assert (run_dir / unquote(url)).is_file(), url
    shot = tmp_path / "page.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p2'}",
                    f"--screenshot={shot}", "--window-size=1400,700", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000  # a rendered table, not a blank page
