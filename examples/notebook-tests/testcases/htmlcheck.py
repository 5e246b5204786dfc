"""What the tests need to know about an nbconvert HTML page, read with the
standard library's html.parser (no extra dependencies)."""
from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

INPUT = Path(__file__).resolve().parent.parent / "input"

MARKER_PREFIX = "gpuflow-scrna:"
STDERR_MIME = "application/vnd.jupyter.stderr"
# nbconvert renders stderr streams and error outputs alike (a stderr block);
# only an error output carries IPython's traceback header
TRACEBACK = "Traceback (most recent call last)"
# papermill's --report-mode banner above a failed notebook
PAPERMILL_BANNER = "An Exception was encountered at"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def html_files() -> list[Path]:
    """Every executed-notebook page staged under input/."""
    return sorted(INPUT.rglob("*.html"))


@dataclass
class Page:
    title: str = ""
    elements: int = 0
    images: list[str] = field(default_factory=list)  # src of every <img>
    stderr_blocks: list[str] = field(default_factory=list)  # text of each stderr/error output
    text: str = ""

    @property
    def tracebacks(self) -> list[str]:
        return [b for b in self.stderr_blocks if TRACEBACK in b]

    def marker_lines(self, prefix: str = MARKER_PREFIX) -> list[str]:
        return [ln.strip() for ln in self.text.splitlines() if ln.strip().startswith(prefix)]


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._depth = 0
        self._stderr_depth: int | None = None  # depth where the open stderr block started
        self._block: list[str] = []
        self._in_title = False
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.page.elements += 1
        if tag == "img":
            self.page.images.append(dict(attrs).get("src") or "")
        if tag in VOID:
            return
        self._depth += 1
        self._in_title = tag == "title"
        if self._stderr_depth is None and dict(attrs).get("data-mime-type") == STDERR_MIME:
            self._stderr_depth, self._block = self._depth, []

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if self._stderr_depth is not None and self._depth == self._stderr_depth:
            self.page.stderr_blocks.append("".join(self._block))
            self._stderr_depth = None
        self._depth -= 1
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.page.title += data
        if self._stderr_depth is not None:
            self._block.append(data)
        self._text.append(data)

    def close(self) -> None:
        super().close()
        self.page.text = "".join(self._text)


def read(html: str) -> Page:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.page
