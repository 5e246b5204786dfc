"""`gpuflow execute` on notebooks papermill runs: the same outcome, told in the user's words."""
from __future__ import annotations

import json
from pathlib import Path

from tests.contact.helpers import gpuflow, write_notebook


def test_a_cell_the_kernel_reports_failed_is_a_failed_cell(tmp_path: Path) -> None:
    write_notebook(tmp_path / "magic.ipynb", "x = 1", "%undefined-line-magic", "print('never')")
    done = gpuflow("execute", "magic.ipynb", "out/magic_out.ipynb", "--gpu", "off", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "undefined-line-magic" in done.stderr.splitlines()[-1]
    out = json.loads((tmp_path / "out" / "magic_out.ipynb").read_text())
    assert not any("never" in str(c.get("outputs")) for c in out["cells"])


def test_kernelspec_with_language_and_no_name_runs(tmp_path: Path) -> None:
    write_notebook(tmp_path / "lang.ipynb", "print('ran')", kernelspec={"language": "python", "display_name": "P"})
    done = gpuflow("execute", "lang.ipynb", "out/lang_out.ipynb", "--gpu", "off", "--kernel", "", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kernelspec" in done.stderr  # the warning says what was off
    done = gpuflow("execute", "lang.ipynb", "out/lang_out2.ipynb", "--gpu", "off", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


def test_os_exit_is_kept_and_is_a_kernel_death(tmp_path: Path) -> None:
    write_notebook(tmp_path / "dies.ipynb", "print('before')", "import os\nos._exit(3)", "print('after')")
    done = gpuflow("execute", "dies.ipynb", "out/dies_out.ipynb", "--gpu", "off", cwd=tmp_path)
    assert done.returncode == 137, done.stderr[-2000:]
    assert "status 3" in done.stderr.splitlines()[-1]
    # the blueprints' shutdown idiom is still removed
    write_notebook(tmp_path / "bp.ipynb", "print('ok')", "import IPython\nIPython.Application.instance().kernel.do_shutdown(True)")
    done = gpuflow("execute", "bp.ipynb", "out/bp_out.ipynb", "--gpu", "off", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


def test_cell_numbers_are_the_users_and_in_n_is_papermills(tmp_path: Path) -> None:
    write_notebook(tmp_path / "four.ipynb", "md:# title", "a = 1", "raise ValueError('third')", "print('never')")
    done = gpuflow("execute", "four.ipynb", "out/four_out.ipynb", "--gpu", "auto", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    # the 3rd cell of 4 (one markdown), the 2nd code cell: papermill shows In [2]
    assert "cell 3 (In [2]) raised ValueError: third" in done.stderr.splitlines()[-1]
    rec = json.loads((tmp_path / "out" / "steps" / "four_out.execute.json").read_text())
    assert (rec["details"]["cells"], rec["details"]["executed_cells"]) == (3, 2)


def test_two_executes_into_one_folder_keep_both_logs_and_records(tmp_path: Path) -> None:
    write_notebook(tmp_path / "a.ipynb", "print('from a')")
    write_notebook(tmp_path / "b.ipynb", "print('from b')")
    for name in ("a", "b"):
        done = gpuflow("execute", f"{name}.ipynb", f"out/{name}_output.ipynb", "--gpu", "off", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    assert "from a" in (out / "a.papermill.log").read_text() and "from b" in (out / "b.papermill.log").read_text()
    records = {p.name: json.loads(p.read_text()) for p in (out / "steps").glob("*.json")}
    assert set(records) == {"a.execute.json", "b.execute.json"}
    assert records["a.execute.json"]["details"]["input"].endswith("a.ipynb")
