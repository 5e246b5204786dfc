"""pytest's JUnit XML read back into counts: what the summary and the test
step both report."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from gpuflow.core import errors

XPASS_MESSAGE = "xfail-marked test passes unexpectedly"


@dataclass(frozen=True, kw_only=True)
class TestCounts:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    xfailed: int = 0
    xpassed: int = 0
    failing: tuple[str, ...] = ()

    __test__ = False  # not a pytest test class

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped + self.xfailed + self.xpassed


@dataclass(frozen=True, kw_only=True)
class TestDetails(TestCounts):
    """What `gpuflow.test` records: pytest's counts and where its reports went
    (read back with `StepRecord.view(TestDetails)`)."""

    out_dir: str | None = None


def parse_junit(path: Path, output: str = "") -> TestCounts:
    """Counts from pytest's JUnit XML. pytest writes an xfail as
    `<skipped type="pytest.xfail">`, and a non-strict xpass as a plain pass:
    the xpass count comes from pytest's final summary line in `output`."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise errors.InputError(f"{path}: cannot read JUnit XML: {exc}") from None
    counts = dict.fromkeys(("passed", "failed", "errors", "skipped", "xfailed", "xpassed"), 0)
    failing: list[str] = []
    for case in root.iter("testcase"):
        kind = _case_kind(case)
        counts[kind] += 1
        if kind in ("failed", "errors"):
            classname, name = case.get("classname", ""), case.get("name", "")
            failing.append(f"{classname}::{name}" if classname else name)
    summary_xpassed = _summary_count(output, "xpassed")
    moved = max(0, min(summary_xpassed - counts["xpassed"], counts["passed"]))
    counts["passed"] -= moved
    counts["xpassed"] += moved
    return TestCounts(**counts, failing=tuple(failing))


def _case_kind(case: ET.Element) -> str:
    if case.find("failure") is not None:
        return "failed"
    if case.find("error") is not None:
        return "errors"
    skipped = case.find("skipped")
    if skipped is None:
        return "passed"
    if skipped.get("type") == "pytest.xfail":
        return "xfailed"
    if skipped.get("message") == XPASS_MESSAGE:
        return "xpassed"
    return "skipped"


def _summary_count(output: str, word: str) -> int:
    lines = [ln for ln in output.splitlines() if ln.startswith("=") and " in " in ln]
    match = re.search(rf"(\d+) {word}\b", lines[-1]) if lines else None
    return int(match.group(1)) if match else 0
