"""Convert an executed notebook to HTML with nbconvert's HTMLExporter, in-process.

Same output as `jupyter nbconvert --to html NB.ipynb` (NB.html beside it, the
`lab` template), without the CLI's app/config start-up and with the notebook
validated once instead of after every preprocessor (nbconvert #1663).
Partial and failed notebooks convert too: the report must show the error.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuflow.core import artifacts, errors, tables
from gpuflow.core.cachedir import cache_dir
from gpuflow.core.fsutil import atomic_write_text
from gpuflow.core.log import log
from gpuflow.core.step import Step
from gpuflow.gpu import guard

LOG_NAME = artifacts.NBCONVERT_LOG


@dataclass(frozen=True, kw_only=True)
class ConvertResult:
    notebook: Path
    html: Path
    bytes: int
    duration_s: float
    log: Path | None = None

    def __str__(self) -> str:
        return f"{self.html} ({self.bytes} bytes) in {self.duration_s:.1f}s"

    def _repr_html_(self) -> str:
        return tables.dataclass_table(self)


def default_output(notebook: Path) -> Path:
    """Where `jupyter nbconvert --to html` writes: NB.html beside NB.ipynb."""
    return notebook.with_suffix(".html")


def _read_notebook(path: Path) -> Any:
    import nbformat
    from nbformat.reader import NotJSONError

    # Read without validating: the exporter validates once after its
    # preprocessors (optimistic_validation), and validation is most of
    # nbconvert's time on large notebooks (nbconvert #1663).
    try:
        text = path.read_text(encoding="utf-8")
        nb = nbformat.reader.reads(text)
        major = nb.get("nbformat")
        if isinstance(major, bool) or major not in (2, 3, 4):
            raise errors.InputError(f"{path}: not a notebook: nbformat {major!r}; gpuflow reads nbformat 2 to 4")
        return nbformat.convert(nb, 4)
    except RecursionError:
        raise errors.InputError(f"{path}: not a notebook: its JSON is nested too deeply") from None
    except FileNotFoundError:
        raise errors.InputError(f"{path}: no such notebook") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.InputError(f"{path}: cannot read: {exc}") from None
    except (NotJSONError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise errors.InputError(f"{path}: not a notebook: {str(exc)[:200]}") from None


def _exporter(template: str, no_input: bool, embed_images: bool, sanitize_html: bool,
              logger: logging.Logger) -> Any:
    from nbconvert import HTMLExporter

    try:
        return HTMLExporter(
            template_name=template,
            exclude_input=no_input,
            # `jupyter nbconvert --no-input` hides the prompts too
            exclude_input_prompt=no_input,
            exclude_output_prompt=no_input,
            embed_images=embed_images,
            sanitize_html=sanitize_html,
            optimistic_validation=True,
            log=logger,
        )
    except Exception as exc:  # traitlets raises TraitError / ValueError on a bad template
        missing = "No template sub-directory" in str(exc)
        line = template_missing(template) if missing else f"nbconvert template {template!r}: {exc}"
        raise errors.ConfigError(line) from None


def template_missing(template: str = "lab") -> str:
    """The one line for a template nbconvert cannot find, with how to fix it:
    `pip install --target DIR` puts the templates in DIR/share/jupyter, where
    Jupyter does not look unless JUPYTER_PATH says so."""
    from jupyter_core.paths import jupyter_path

    looked = ", ".join(jupyter_path("nbconvert", "templates"))
    return (f"nbconvert's {template!r} template is not installed where Jupyter looks ({looked}); "
            "after `pip install --target DIR`, set JUPYTER_PATH=DIR/share/jupyter")


def find_template(template: str = "lab") -> str | None:
    """None when nbconvert can load `template`, else the one line saying why not."""
    try:
        _exporter(template, False, False, False, logging.Logger("gpuflow.nbconvert.check"))
    except errors.ConfigError as exc:
        return str(exc)
    return None


def _cache_templates(exporter: Any) -> None:
    # Jinja compiles nbconvert's templates from source in every process; its
    # bytecode cache saves ~0.1 s per conversion. A read-only home (a
    # container) just means no cache.
    import jinja2

    folder = cache_dir() / "jinja"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    if os.access(folder, os.W_OK):
        exporter.environment.bytecode_cache = jinja2.FileSystemBytecodeCache(str(folder))


def _metadata(notebook: Path) -> dict[str, Any]:
    # what from_filename would put in resources: the title and modified date
    t = time.gmtime(notebook.stat().st_mtime)
    stamp = f"{time.strftime('%B', t)} {t.tm_mday}, {t.tm_year}"
    return {"metadata": {"name": notebook.stem, "path": str(notebook.parent), "modified_date": stamp}}


def convert_notebook(
    notebook: Path,
    output: Path | None = None,
    *,
    template: str = "lab",
    no_input: bool = False,
    embed_images: bool = False,
    log_path: Path | None = None,
    sanitize_html: bool = False,
) -> ConvertResult:
    """Convert `notebook` to HTML (default: NB.html beside it), atomically.

    `sanitize_html` strips scripts and unsafe markup from Markdown and outputs:
    use it for notebooks whose outputs you do not trust.
    """
    notebook = Path(notebook)
    html_path = Path(output) if output is not None else default_output(notebook)
    if html_path.is_dir():
        html_path = html_path / default_output(notebook).name
    log_path = Path(log_path) if log_path is not None else html_path.parent / LOG_NAME
    buffer = io.StringIO()
    logger = _file_logger(buffer)
    t0 = time.monotonic()
    try:
        with _gc_paused():
            size = _export(notebook, html_path, logger, template=template, no_input=no_input,
                           embed_images=embed_images, sanitize_html=sanitize_html)
    except errors.GpuflowError as exc:
        logger.error("%s", exc)
        raise
    finally:
        atomic_write_text(log_path, buffer.getvalue())
    return ConvertResult(notebook=notebook, html=html_path, bytes=size,
                         duration_s=round(time.monotonic() - t0, 3), log=log_path)


def warm(template: str = "lab") -> None:
    """Pay a conversion's one-time costs now: nbconvert's imports, the
    template compile, the first-use regexes of the highlighter and the HTML
    post-processing. `gpuflow run` calls it in a thread while the notebook
    executes, so that the conversion on the critical path only renders."""
    import nbformat.v4 as v4

    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("# warm-up"),
        v4.new_code_cell("print(1)", execution_count=1, outputs=[
            v4.new_output("stream", name="stdout", text="1\n"),
            v4.new_output("display_data", data={"text/html": "<b>1</b>", "text/plain": "1"})]),
    ])
    exporter = _exporter(template, False, False, False, logging.Logger("gpuflow.nbconvert.warm"))
    _cache_templates(exporter)
    exporter.from_notebook_node(nb)


def _export(notebook: Path, html_path: Path, logger: logging.Logger, *, template: str, no_input: bool,
            embed_images: bool, sanitize_html: bool) -> int:
    logger.info("Converting notebook %s to html", notebook)
    nb = guard.for_report(_read_notebook(notebook))
    if sanitize_html:
        _distrust_outputs(nb)
    exporter = _exporter(template, no_input, embed_images, sanitize_html, logger)
    _cache_templates(exporter)
    try:
        body, _ = exporter.from_notebook_node(nb, resources=_metadata(notebook))
    except Exception as exc:  # nbformat.ValidationError, template errors
        raise errors.InputError(f"{notebook}: nbconvert failed: {str(exc).splitlines()[0][:200]}") from None
    _check_html(body, notebook)
    atomic_write_text(html_path, body)
    size = html_path.stat().st_size
    logger.info("Writing %d bytes to %s", size, html_path)
    return size


# Output types nbconvert either sanitizes (HTML, Markdown) or writes as data
# that cannot run (text, JSON, base64 images). Everything else, mermaid, SVG,
# LaTeX and JavaScript included, is what nbconvert 7.17 let through as live
# markup, so an untrusted notebook loses those outputs instead.
SAFE_OUTPUT_TYPES = frozenset({"text/plain", "text/html", "text/markdown", "application/json",
                               "image/png", "image/jpeg", "image/gif"})


def _distrust_outputs(nb: Any) -> None:
    """Under --sanitize-html: keep only the output types above, and only
    integer image sizes (the templates write `width` and `height` into the
    `<img>` tag unquoted, so any other text there becomes an attribute)."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if not isinstance(data, dict):
                continue
            dropped = [m for m in data if m not in SAFE_OUTPUT_TYPES]
            for mime in dropped:
                del data[mime]
            if dropped and not data:
                data["text/plain"] = f"[output removed by --sanitize-html: {', '.join(sorted(dropped))}]"
            metadata = output.get("metadata")
            if not isinstance(metadata, dict):
                continue
            for meta in metadata.values():
                if not isinstance(meta, dict):
                    continue
                for key in ("width", "height"):
                    if key in meta and not _is_size(meta[key]):
                        del meta[key]


def _is_size(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit())


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # importing nbconvert (~650 modules) and building the page (Jinja output,
    # a BeautifulSoup tree) allocate hundreds of thousands of objects and no
    # cycles worth collecting mid-way: the collector's passes cost ~10% of a
    # conversion (benchmarks/convert_bench.py)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _file_logger(buffer: io.StringIO) -> logging.Logger:
    # a private logger per call: nbconvert's warnings go to the log file, in
    # the CLI's format, and never to another conversion's log
    logger = logging.Logger("gpuflow.nbconvert", level=logging.INFO)
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("[NbConvertApp] %(levelname)s | %(message)s"))
    logger.addHandler(handler)
    return logger


def _check_html(body: str, notebook: Path) -> None:
    if not body.strip() or "<html" not in body[:2000].lower():
        raise errors.StepFailed(f"{notebook}: nbconvert produced no HTML")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", type=Path, help="the executed notebook (.ipynb)")
    p.add_argument("output", type=Path, nargs="?", default=None,
                   help="the HTML to write (default: NB.html beside the notebook)")
    p.add_argument("--template", default="lab", help="nbconvert template (default: lab)")
    p.add_argument("--no-input", action="store_true", help="hide code cells and prompts")
    p.add_argument("--embed-images", action="store_true", help="embed Markdown images as data URIs")
    p.add_argument("--log", type=Path, default=None, dest="log_path",
                   help=f"conversion log (default: {LOG_NAME} beside the HTML)")
    p.add_argument("--sanitize-html", action="store_true",
                   help="strip scripts and unsafe HTML from outputs (untrusted notebooks)")


def _call(args: argparse.Namespace) -> ConvertResult:
    result = convert_notebook(
        args.notebook, args.output, template=args.template, no_input=args.no_input,
        embed_images=args.embed_images, log_path=args.log_path, sanitize_html=args.sanitize_html,
    )
    log.info(f"wrote {result}")
    return result


def _details(result: ConvertResult) -> dict[str, Any]:
    return {"notebook": str(result.notebook.resolve()), "html": str(result.html.resolve()),
            "bytes": result.bytes, "log": str(result.log.resolve() if result.log else None)}


def _record_dir(args: argparse.Namespace) -> Path:
    if args.record_dir is not None:
        return Path(args.record_dir)
    out = args.output if args.output is not None else default_output(args.notebook)
    return Path(out) if Path(out).is_dir() else Path(out).parent


STEP = Step(
    name="convert", description="Convert a notebook to HTML (nbconvert, in-process).",
    add_arguments=add_arguments, call=_call, details=_details, stdout=lambda result: result.html,
    record_dir=_record_dir,
)


def main(argv: Sequence[str] | None = None) -> int:
    return STEP.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
