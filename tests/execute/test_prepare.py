"""Preparation and bad input: no kernel is started by any test here."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from gpuflow import execute
from gpuflow.core import cli, errors
from gpuflow.gpu import guard
from gpuflow.notebook import kernel, params, prepare
from tests.execute.conftest import MakeNotebook, build_notebook, read

BLUEPRINT_SHUTDOWN = (
    "# These notebooks are very GPU memory intensive!\n"
    "# In order to free up GPU memory, we'll kill this kernel prior to proceeding.\n"
    "import IPython\n"
    "app = IPython.Application.instance()\n"
    "app.kernel.do_shutdown(True)"
)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = execute.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "input notebook not found"),
        (b"", "is empty, not a notebook"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a binary file"),
        (b'{"cells": [], "nbformat": 4, "metadata": {', "is not valid JSON (truncated?)"),
        (b"{not json at all}", "is not valid JSON"),
        (b"[1, 2, 3]", "JSON list, not an object"),
        (b'{"cells": []}', "no integer 'nbformat' field"),
        (b'{"nbformat": 9, "nbformat_minor": 0, "cells": [], "metadata": {}}', "is nbformat 9"),
        (b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code"}]}',
         "is not a valid notebook"),
    ],
    ids=["missing", "empty", "binary", "truncated", "corrupt", "list", "no-nbformat", "future", "invalid"],
)
def test_bad_input_is_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    src = tmp_path / "in.ipynb"
    if content is not None:
        src.write_bytes(content)
    code, out, err = run_main([str(src), str(tmp_path / "out" / "out.ipynb")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("gpuflow.execute: ") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "out.ipynb").exists()
    record = json.loads((tmp_path / "out" / "steps" / "out.execute.json").read_text())
    assert record["exit_code"] == 2 and message in record["error"]


def test_unknown_kernel_unwritable_output_and_same_file(
    make_notebook: MakeNotebook, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = make_notebook("print(1)")
    code, _, err = run_main([str(nb), str(tmp_path / "o.ipynb"), "--kernel", "no-such-kernel"], capsys)
    assert (code, err.strip()) == (2, "gpuflow.execute: no Jupyter kernel named 'no-such-kernel' "
                                      f"(installed: {err.split('(installed: ')[1].strip()}")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = run_main([str(nb), str(blocker / "out.ipynb")], capsys)
    assert code == 2 and f"output directory {blocker} is not writable" in err
    before = nb.read_bytes()
    code, _, err = run_main([str(nb), str(nb)], capsys)
    assert code == 2 and "is the input notebook" in err and nb.read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-y", "[1, 2]"], "-y YAML must be a YAML mapping"),
        (["-y", "a: [1"], "-y YAML is not valid YAML"),
        (["-f", "missing.yaml"], "cannot read parameters file missing.yaml"),
        (["--cwd", "no/such/dir"], "--cwd no/such/dir is not a directory"),
        (["--timeout", "0"], "--timeout must be a positive number of seconds, not 0"),
    ],
)
def test_bad_parameters_are_exit_2(
    make_notebook: MakeNotebook, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    argv: list[str], message: str,
) -> None:
    code, _, err = run_main([str(make_notebook("x = 1")), str(tmp_path / "o.ipynb"), *argv], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_parameters_are_read_like_papermill(tmp_path: Path) -> None:
    assert [params.typed_value(v) for v in ("True", "None", "3", "2.5", "1e3", "abc", "0x10")] == [
        True, None, 3, 2.5, 1000.0, "abc", "0x10"]
    pfile = tmp_path / "p.yaml"
    pfile.write_text("a: 1\nb: from-file\n")
    p = cli.parser("t", "t")
    execute.add_arguments(p)
    args = p.parse_args(["i", "o", "-f", str(pfile), "-y", "b: from-yaml\nc: [1, 2]", "-p", "c", "False"])
    assert params.parameters_from_args(args) == {"a": 1, "b": "from-yaml", "c": False}


def test_prepare_only_strips_shutdown_and_keeps_the_input(
    make_notebook: MakeNotebook, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_notebook("x = 1", "%%time\ny = 2\nget_ipython().kernel.do_shutdown(True)", BLUEPRINT_SHUTDOWN,
                        parameters="alpha = 0")
    before = src.read_bytes()
    out = tmp_path / "prep" / "out.ipynb"
    code, stdout, _ = run_main([str(src), str(out), "--prepare-only", "-p", "alpha", "0.5"], capsys)
    assert code == 0 and stdout.strip() == str(out)
    assert src.read_bytes() == before
    nb = read(out)
    sources = [c.source for c in nb.cells]
    assert sources[0] == "alpha = 0" and "alpha = 0.5" in sources[1]
    assert nb.cells[1].metadata.tags == ["injected-parameters"]
    assert sources[3] == ("%%time\ny = 2\n"
                          "# [gpuflow: kernel shutdown removed] get_ipython().kernel.do_shutdown(True)")
    assert len(nb.cells) == 4  # the blueprint's shutdown-only cell is gone
    assert all(c.metadata.jupyter.source_hidden for c in nb.cells)  # report mode


def test_shutdown_forms(tmp_path: Path) -> None:
    # os._exit ends the process on purpose: kept, and a dead kernel if it runs
    keep, exits = "import os\nos.kill(os.getpid(), 9)", "import os\nos._exit(0)"
    gone = "import IPython\nIPython.Application.instance().kernel.do_shutdown(True)"
    nb = prepare.load_notebook(build_notebook(tmp_path / "n.ipynb", keep, exits, gone, "quit()", "if False:\n    exit()"))
    report = prepare.prepare(nb)
    assert report.removed_cells == (2, 3)
    assert [c.source for c in nb.cells] == [keep, exits, "if False:\n    exit()"]


def test_corpus_blueprints_lose_their_shutdown_cell(corpus: Path) -> None:
    for path in sorted(corpus.glob("*.ipynb")):
        nb = prepare.load_notebook(path)
        report = prepare.prepare(nb)
        assert report.removed_cells == (len(nb.cells),), path.name  # the last cell
        assert not any("do_shutdown" in c.source for c in nb.cells if c.cell_type == "code")


def test_guard_cell_is_first_code_cell_and_replaced_on_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = build_notebook(tmp_path / "n.ipynb", "x = 1")
    nb = nbformat.read(src, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("# title"))
    nbformat.write(nb, src)
    monkeypatch.setattr(guard, "setup_cell_source", lambda opts, facts, cell_stats=None: "GUARD = 1")
    out = tmp_path / "o.ipynb"
    for source in (src, out):  # preparing an output notebook again must not stack guard cells
        assert execute.main([str(source), str(tmp_path / "o2.ipynb"), "--prepare-only"]) == 0
        (tmp_path / "o2.ipynb").replace(out)
        cells = read(out).cells
        assert [c.source for c in cells] == ["# title", "GUARD = 1", "x = 1"]
        assert cells[1].metadata.tags == [prepare.GUARD_TAG]


def test_nbformat3_is_upgraded(tmp_path: Path) -> None:
    v3 = {"nbformat": 3, "nbformat_minor": 0, "metadata": {"name": ""},
          "worksheets": [{"cells": [{"cell_type": "code", "input": "print(3)", "language": "python",
                                     "outputs": [], "metadata": {}}], "metadata": {}}]}
    path = tmp_path / "v3.ipynb"
    path.write_text(json.dumps(v3))
    nb = prepare.load_notebook(path)
    assert prepare.prepare(nb).upgraded_from == 3
    assert nb.nbformat == 4 and nb.cells[0].source == "print(3)"


def test_kernel_env_keeps_secrets_out_unless_passed() -> None:
    base = {"PATH": "/bin", "GITHUB_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s", "DB_PASSWORD": "p",
            "OPENAI_API_KEY": "k", "CUDA_VISIBLE_DEVICES": "1", "HF_TOKEN": "h"}
    env = kernel.kernel_env(base, pass_env=["HF_TOKEN"])
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1", "HF_TOKEN": "h"}
    assert kernel.withheld(base, ["HF_TOKEN"]) == ["AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "GITHUB_TOKEN",
                                                   "OPENAI_API_KEY"]
    assert errors.InputError.exit_code == 2
