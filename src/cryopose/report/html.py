"""One self-contained HTML page: tables of numbers and PNG figures embedded as base64."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path

from ..io.atomic import atomic_path

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 0.25em 0.9em; text-align: left;
     border-bottom: 1px solid #eee; } th { color: #555; font-weight: 600; }
td.value { font-variant-numeric: tabular-nums; font-weight: 600; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } .note { color: #666; font-size: 0.9em; }
"""


def _table(rows: dict[str, str]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td class='value'>{html.escape(v)}</td></tr>"
                   for k, v in rows.items())
    return f"<table>{body}</table>"


def _figure(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)} ({html.escape(png.name)})</figcaption></figure>")


def write_html(path: str | os.PathLike, title: str, sections: Sequence[tuple[str, dict[str, str]]],
               figures: Sequence[tuple[str | os.PathLike, str]], notes: Sequence[str] = ()) -> None:
    """Write ``path``: a title, ``sections`` as ``(heading, {name: value})`` tables, ``notes`` as paragraphs,
    and ``figures`` as ``(png path, caption)`` embedded in the page (so it can be moved or mailed alone)."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    for heading, rows in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{_table(rows)}")
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [_figure(Path(png), caption) for png, caption in figures]
    parts.append("</body></html>")
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text("\n".join(parts), encoding="utf-8")
