"""The build copies the bundled demo into the package, so a wheel runs it.

`notebooks/` and `examples/notebook-tests/` at the repository root stay the
source of truth; a built gpuflow carries a copy of the demo notebook and its
test repo under `gpuflow/_demo/`, in the same layout, which
`gpuflow.flow.config.demo_root` finds. Copying at build time (rather than
keeping a second copy in git) means the two can never drift apart.
Everything else about the package is in pyproject.toml.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# the demo notebook, its test repo, and the settings the demo runs with ([tool.gpuflow])
DEMO = ("notebooks/scrna_preprocessing.ipynb", "examples/notebook-tests", "pyproject.toml")
# what a local run may have left in the sources, which must not ship
LEFTOVERS = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".coverage", "*.html", "poetry.lock")


class BuildWithDemo(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install runs the checkout itself, demo included
        dest = Path(self.build_lib) / "gpuflow" / "_demo"
        for rel in DEMO:
            src, out = ROOT / rel, dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, out, ignore=LEFTOVERS, dirs_exist_ok=True)
            else:
                shutil.copy2(src, out)


setup(cmdclass={"build_py": BuildWithDemo})
