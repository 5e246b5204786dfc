"""Row 4: `gpuflow run` on the bundled notebook and suite vs the existing
workflow's shell sequence on the same inputs, in the same environment."""
from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.harness import ROOT, Config, Line, Side, gpuflow_cmd, measure
from benchmarks.rows_steps import PAPERMILL_FLAGS

NOTEBOOK = ROOT / "notebooks" / "scrna_preprocessing.ipynb"
SUITE = ROOT / "examples" / "notebook-tests"

# The GitHub Actions job's steps 3-6 (shared/notes/upstream-workflows.md),
# minus the installs: papermill | tee, nbconvert > log, a staged copy of the
# test repo with the HTML in input/, pytest with cov/junit/html.
WORKFLOW = """set -e
nb="$1"; suite="$2"; work="$3"; stem="$(basename "$nb" .ipynb)"
cd "$work"
papermill "$nb" "${{stem}}_output.ipynb" {flags} 2>&1 | tee papermill.log
jupyter nbconvert --to html "${{stem}}_output.ipynb" --output "${{stem}}_output" --output-dir . > jupyter_nbconvert.log 2>&1
cp -r "$suite" test-repo
rm -rf test-repo/input/*; mkdir -p test-repo/input
cp "${{stem}}_output.html" test-repo/input/
cd test-repo
pytest -m single_cell --cov=./ --cov-report=xml:../coverage.xml --junitxml=../pytest_results.xml \\
  --html=../pytest_report.html --self-contained-html -p no:cacheprovider 2>&1 | tee ../pytest_output.log
""".format(flags=" ".join(PAPERMILL_FLAGS))


def _fresh(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def row4_flow(cfg: Config) -> list[Line]:
    case = f"{NOTEBOOK.name} + {SUITE.name}"
    if not NOTEBOOK.exists() or not SUITE.is_dir():
        return [Line(row="4", case=case, target="<= 0.75",
                     note=f"n/a (bundled notebook or suite missing: {NOTEBOOK.relative_to(ROOT)}, "
                          f"{SUITE.relative_to(ROOT)})")]
    base = cfg.scratch / "row4"
    g_dir, s_dir = base / "gpuflow", base / "shell"
    baseline = Side(name="workflow shell", prepare=lambda: _fresh(s_dir), cwd=ROOT,
                    cmd=["sh", "-c", WORKFLOW, "workflow", str(NOTEBOOK), str(SUITE), str(s_dir)])
    gpuflow = Side(name="gpuflow run", prepare=lambda: _fresh(g_dir), cwd=ROOT,
                   cmd=gpuflow_cmd("run", "--out", g_dir))
    runs, warmup = (1, 0) if cfg.quick else (3, 1)
    line = measure("4", case, "gpuflow.run", gpuflow, baseline, cfg=cfg, runs=runs, warmup=warmup,
                   target="<= 0.75", limit=0.75)
    line.commands["baseline"] = "sh -c '<the workflow's steps 3-6: WORKFLOW in benchmarks/rows_flow.py>' NB SUITE DIR"
    return [line]
