"""``report.html``: the Markdown report as one self-contained page, for MLflow's artifact viewer.

MLflow shows an HTML artifact as a page but a Markdown one as text, and resolves no relative link:
report.md's links to ``plots/`` lead nowhere there. So the same Markdown is rendered to HTML
(markdown-it, CommonMark with tables, raw HTML off so no tensor name can inject markup) with every
plot embedded as a PNG data URI.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Mapping
from typing import Any

import fsspec
from markdown_it import MarkdownIt

from int8flow.schemas.run_folder import REPORT_HTML
from int8flow.tasks.outputs.atomic_files import atomic_write_text
from int8flow.tasks.outputs.report import render_markdown

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:70em;margin:1em auto;padding:0 1em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:0.2em 0.5em}"
    "img{max-width:100%}code{font-size:0.9em}"
)


def write_report_html(out_dir: str, report: Mapping[str, Any]) -> str:
    """Write ``report.html`` into ``out_dir`` (path or fsspec URL), atomically; return its path."""
    base = out_dir.rstrip("/")
    path = f"{base}/{REPORT_HTML}"
    atomic_write_text(path, render_html(report, lambda plot: _png_data_uri(f"{base}/{plot}")))
    return path


def render_html(report: Mapping[str, Any], plot_image: Callable[[str], str]) -> str:
    """The page: the report's title, its Markdown rendered, ``plot_image(path)`` the source of each plot."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(render_markdown(report, plot_image))
    title = html.escape(str((report.get("model") or {}).get("uri") or "int8flow run"))
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>int8flow: {title}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n"
    )


def _png_data_uri(path: str) -> str:
    with fsspec.open(path, "rb") as file:
        return "data:image/png;base64," + base64.b64encode(file.read()).decode("ascii")
