"""Every HTML page and summary gpuflow writes is safe to open, proved in headless Chromium."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from tests.flow.test_run import notebook, only_run
from tests.security.conftest import PAYLOAD_JS, PWNED, chromium_dom, gpuflow, hrefs

pytestmark = pytest.mark.chromium

BROKEN_PNG = "bm90IGFuIGltYWdl"  # base64 of "not an image": the browser fires onerror


def _hostile_outputs(path: Path) -> Path:
    """An executed notebook whose outputs each try to run a script in the HTML report."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("hostile()", execution_count=1)
    data_and_meta = [
        ({"text/vnd.mermaid": f"graph TD;A-->B\n</pre><script>{PAYLOAD_JS}</script><pre>"}, {}),
        ({"image/png": BROKEN_PNG}, {"image/png": {"width": f"1 onerror={PAYLOAD_JS}"}}),
        ({"image/jpeg": BROKEN_PNG}, {"image/jpeg": {"height": f"1 onerror={PAYLOAD_JS}"}}),
        ({"text/html": f"<script>{PAYLOAD_JS}</script><img src=x onerror=\"{PAYLOAD_JS}\"><b>bold</b>"}, {}),
        ({"image/svg+xml": f"<svg xmlns='http://www.w3.org/2000/svg' onload=\"{PAYLOAD_JS}\"></svg>"}, {}),
        ({"text/markdown": f"<img src=x onerror=\"{PAYLOAD_JS}\">"}, {}),
        ({"application/javascript": PAYLOAD_JS}, {}),
        ({"text/latex": f"$x$</script><script>{PAYLOAD_JS}</script>"}, {}),
    ]
    cell.outputs = [nbformat.v4.new_output("display_data", data=d, metadata=m) for d, m in data_and_meta]
    nb.cells.append(cell)
    nbformat.write(nb, str(path))
    return path


def test_sanitize_html_runs_no_script_from_any_output(tmp_path: Path) -> None:
    nb = _hostile_outputs(tmp_path / "hostile.ipynb")
    plain = gpuflow("convert", str(nb), str(tmp_path / "plain.html"))
    assert plain.returncode == 0, plain.stderr[-2000:]
    # the attack is real: without --sanitize-html the report runs it
    assert f"<title>{PWNED}</title>" in chromium_dom(tmp_path / "plain.html", tmp_path / "p1")
    done = gpuflow("convert", str(nb), str(tmp_path / "safe.html"), "--sanitize-html")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = chromium_dom(tmp_path / "safe.html", tmp_path / "p2")
    assert PWNED not in dom
    assert "<b>bold</b>" in dom  # safe markup is kept


def test_names_test_ids_and_errors_run_no_script_on_any_page(tmp_path: Path) -> None:
    repo, out, tests = tmp_path / "nbs", tmp_path / "out", tmp_path / "tests-repo"
    names = ["javascript:alert(document.domain);x", f"<img src=x onerror={PAYLOAD_JS}>",
             "line\n## injected heading\n<details>"]
    for name in names:
        notebook(repo / f"{name}.ipynb", "print('RESULT=', n)")
    (tests / "tests").mkdir(parents=True)
    (tests / "pytest.ini").write_text("[pytest]\nmarkers =\n    single_cell: x\n")
    # a test id made of the staged file's name, as a test repo parametrized over its input/ would
    (tests / "tests" / "test_pages.py").write_text(
        "from pathlib import Path\nimport pytest\n\n"
        "@pytest.mark.single_cell\n"
        "@pytest.mark.parametrize('page', sorted(p.name for p in Path('input').glob('*.html')))\n"
        "def test_page(page):\n    assert 'RESULT=' in Path('input', page).read_text()\n")
    done = gpuflow("run", "--repo", str(repo), "--notebooks", "*.ipynb", "--test-repo", str(tests),
                   "--out", str(out), "--gpu", "off", "--html-name", "{stem}.html")
    run_dir = only_run(out)
    pages = [run_dir / "index.html", *run_dir.glob("*/index.html"), *run_dir.rglob("pytest_report.html")]
    assert len(pages) >= 1 + 2 * len(names) - 1, (pages, done.stderr[-3000:])
    for i, page in enumerate(pages):
        dom = chromium_dom(page, tmp_path / f"profile{i}")
        assert PWNED not in dom, page
        for link in hrefs(dom):
            assert not link.lower().lstrip().startswith(("javascript:", "data:", "vbscript:")), (page, link)
    summary = (run_dir / "STEP_SUMMARY.md").read_text()
    assert "\n## injected" not in summary and "<details>" not in summary and "<img" not in summary
    for md in run_dir.glob("*/STEP_SUMMARY.md"):
        text = md.read_text()
        assert "\n## injected" not in text and "<details>" not in text and "<img" not in text, md
