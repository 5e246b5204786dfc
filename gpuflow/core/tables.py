"""Small HTML tables: the `_repr_html_` of step results in Jupyter, and the
rows of `index.html`. Everything is escaped: values come from notebooks,
test ids and error messages, none of which we control."""
from __future__ import annotations

import dataclasses
import html
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any


def cell(value: Any) -> str:
    if value is None:
        return "&mdash;"
    if isinstance(value, float):
        return f"{value:.2f}"
    return html.escape(str(value))


def table(rows: Iterable[Sequence[Any]], *, header: Sequence[str] = (), caption: str = "") -> str:
    """An HTML table; cells are escaped, so callers pass plain values."""
    parts = ["<table>"]
    if caption:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    if header:
        parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def dataclass_table(obj: Any) -> str:
    """A two-column field/value table of a dataclass instance (for Jupyter)."""
    rows = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr]
    return table(rows, header=("field", "value"), caption=type(obj).__name__)


def href(*segments: str) -> str:
    """A relative link to a file gpuflow wrote, for an `href` attribute: each
    segment percent-encoded, so a name such as `javascript:alert(1)` stays a
    file name and never becomes a scheme, a query or a second attribute."""
    return "/".join(urllib.parse.quote(seg, safe="") for seg in segments)
