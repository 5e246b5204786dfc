"""`python -m benchmarks [--quick] [--only 1,5] [--json PATH] [--include-json FILE] [--markdown PATH]`:
run the comparisons of docs/benchmarks.md on this machine, print one table, write JSON."""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.harness import ROOT, Config, Line, load_lines, machine, markdown, table, write_json
from benchmarks.rows_flow import row4_flow
from benchmarks.rows_network import row5_clone, row6_download
from benchmarks.rows_scaling import row7_scaling
from benchmarks.rows_steps import row1_cli_start, row2_execute, row3_html

ROWS: dict[str, tuple[str, Callable[[Config], list[Line]]]] = {
    "1": ("CLI start", row1_cli_start),
    "2": ("execute overhead", row2_execute),
    "3": ("HTML conversion", row3_html),
    "4": ("whole flow", row4_flow),
    "5": ("clone at a tag", row5_clone),
    "6": ("download", row6_download),
    "7": ("scaling", row7_scaling),
}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, allow_abbrev=False)
    p.add_argument("--quick", action="store_true", help="smoke run: smallest sizes, one run per side")
    p.add_argument("--only", default="", help="comma-separated rows to run, e.g. 1,5 (default: all)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench-out",
                   help="cached inputs, scratch and logs (default: bench-out/)")
    p.add_argument("--json", type=Path, default=None, help="results file (default: OUT_DIR/results.json)")
    p.add_argument("--include-json", type=Path, action="append", default=[],
                   help="add the lines of a results JSON made elsewhere (e.g. the GPU rows, measured on the GPU machine)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown to this file")
    args = p.parse_args(argv)
    unknown = [r for r in _split(args.only) if r not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {', '.join(unknown)}; rows are {', '.join(ROWS)}")
    return args


def _split(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    cfg = Config(quick=args.quick, out=args.out_dir.resolve())
    selected = _split(args.only) or list(ROWS)
    facts = machine()
    print(f"machine: {facts['cores']} cores, {facts['cpu']}, Python {facts['python']}"
          + (f", GPU {facts['gpu']}" if facts["gpu"] else "") + (" (quick)" if cfg.quick else ""),
          file=sys.stderr, flush=True)
    lines: list[Line] = []
    for row in selected:
        title, fn = ROWS[row]
        t0 = time.perf_counter()
        print(f"row {row}: {title} ...", file=sys.stderr, flush=True)
        try:
            lines += fn(cfg)
        except Exception as exc:  # one broken row must not hide the others
            lines.append(Line(row=row, case=title, note=f"row crashed: {type(exc).__name__}: {exc}"))
        print(f"row {row}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    for path in args.include_json:
        lines += load_lines(path)
    print(table(lines))
    out = args.json or cfg.out / "results.json"
    write_json(out, lines, quick=cfg.quick)
    if args.markdown:
        args.markdown.write_text(markdown(lines) + "\n")
    print(f"\nresults: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
