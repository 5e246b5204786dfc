"""`gpuflow <step> ...` is the same as `python -m gpuflow.<step> ...`."""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from gpuflow import __version__

# step name -> module; each module has `main(argv=None) -> int`
STEPS: dict[str, tuple[str, str]] = {
    "run": ("gpuflow.run", "the whole flow: preflight, clone, download, execute, convert, stage, test, summary"),
    "clone": ("gpuflow.clone", "clone a git repo at an exact revision, with retries and backups"),
    "download": ("gpuflow.download", "download a dataset with resume, checksum and cache"),
    "execute": ("gpuflow.execute", "execute a notebook with papermill, with the GPU guard"),
    "convert": ("gpuflow.convert", "convert a notebook to HTML"),
    "stage": ("gpuflow.stage", "put the HTML into a test repo's input folder"),
    "test": ("gpuflow.test", "run the test repo's pytest with coverage, JUnit and HTML reports"),
    "summary": ("gpuflow.summary", "write summary.json, STEP_SUMMARY.md and index.html"),
    "doctor": ("gpuflow.doctor", "print the environment facts a GPU notebook step depends on"),
}


def _usage() -> str:
    width = max(map(len, STEPS))
    lines = [f"usage: gpuflow <step> [options]   (gpuflow {__version__})", "", "steps:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in STEPS.items()]
    lines += ["", "`gpuflow <step> --help` shows a step's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"gpuflow {__version__}")
        return 0
    if args[0] not in STEPS:
        print(f"gpuflow: unknown step {args[0]!r}; one of: {', '.join(STEPS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(STEPS[args[0]][0])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
