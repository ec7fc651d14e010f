"""Markdown and HTML of the evaluate stage's pages: tables, standalone styled pages, embedded figures.

The HTML pages are styled inline and embed their figures, so MLflow's artifact viewer shows them
without any other file.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markdown_it import MarkdownIt

# Inline CSS of the HTML pages: MLflow's artifact viewer shows them without any other file. A long unbroken word
# (a garbled summary) wraps rather than widening its column.
PAGE_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;line-height:1.4}table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
    "td{max-width:40em;overflow-wrap:break-word}th{background:#f3f3f3;position:sticky;top:0}"
    "img{max-width:100%}code{background:#f3f3f3;padding:0 3px}"
)
# The least width of a text column of a standalone table (em; never more than its longest line needs, at about
# 2 characters an em): without it the browser gives the room to the long headers of the number columns and
# squeezes a dialogue to one word a line. The dialogue gets the most.
TEXT_COLUMN_EM = {"dialogue": 26}
TEXT_COLUMN_DEFAULT_EM = 10
TABLE_STYLE = (
    "table.dataframe{font-size:0.875em}table.dataframe th{font-size:0.85em}"
    "table.dataframe th,table.dataframe td{padding:4px 6px}"
)


def escape_cell(value: Any) -> str:
    """A value as one markdown table cell: ``|`` escaped, ``&``, ``<`` and ``>`` as HTML entities (text is never
    taken for HTML), line breaks as ``<br>`` (the one tag GitHub and the HTML report render in a table cell;
    a cell cannot hold a newline), floats to 4 places."""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}"
    return _line_breaks(html.escape(str(value), quote=False).replace("\\", "\\\\").replace("|", "\\|"))


def _line_breaks(text: str) -> str:
    """Every line break (``\\n``, ``\\r\\n``, ``\\r``) as ``<br>``: a table cell cannot hold a newline."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of ``frame`` (no index)."""
    lines = [
        "| " + " | ".join(escape_cell(c) for c in frame.columns) + " |",
        "|" + "|".join("---" for _ in frame.columns) + "|",
    ]
    lines += ["| " + " | ".join(escape_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def html_page(title: str, body: str, style: str = "") -> str:
    """A standalone HTML page: ``body`` (HTML) under the heading ``title``, styled inline (:data:`PAGE_STYLE`
    and ``style``), nothing external."""
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{PAGE_STYLE}{style}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _html_text(value: Any) -> str:
    """A text cell: HTML-escaped, line breaks (a dialogue's turns) as ``<br>``."""
    return _line_breaks(html.escape("" if value is None else str(value)))


def _html_header(name: Any) -> str:
    """A column name, HTML-escaped, that may wrap after each ``_`` (``reward_model_toxicity_before``)."""
    return html.escape(str(name)).replace("_", "_<wbr>")


def html_table(frame: pd.DataFrame, title: str) -> str:
    """A standalone HTML page with ``frame`` as a table; line breaks in text cells are shown as line breaks, and
    text columns keep a readable width (:data:`TEXT_COLUMN_EM`)."""
    # pandas writes a newline in a cell as the two characters "\n", escape or not; so text cells are
    # escaped here and their line breaks turned into <br>, and pandas is told not to escape again.
    texts = [
        c
        for c in frame.columns
        if not pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    ]
    shown = frame.rename(columns={c: _html_header(c) for c in frame.columns})
    body = shown.to_html(
        index=False,
        escape=False,
        border=0,
        float_format=lambda v: f"{v:.4f}",
        formatters={_html_header(c): _html_text for c in texts},
    )
    widths = "".join(
        f"td:nth-child({i}){{min-width:{_text_width(frame[c], c)}em}}"
        for i, c in enumerate(frame.columns, start=1)
        if c in texts
    )
    return html_page(title, f"<h1>{html.escape(title)}</h1>\n{body}", TABLE_STYLE + widths)


def _text_width(column: pd.Series, name: Any) -> int:
    """The least width of a text column (em): :data:`TEXT_COLUMN_EM`, or less when its longest line is short."""
    longest = column.astype(str).str.split(r"\r\n|\r|\n", regex=True).explode().str.len().max()
    return min(TEXT_COLUMN_EM.get(name, TEXT_COLUMN_DEFAULT_EM), -(-int(longest if longest == longest else 0) // 2))


def data_uri(path: str | Path) -> str:
    """A PNG file as a ``data:`` URI, to embed it in a page that must stand alone."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def markdown_to_html(text: str) -> str:
    """Markdown (CommonMark with GitHub's tables) as HTML. Raw HTML is let through: the report's only tags are
    the ``<br>`` of table cells, since :func:`escape_cell` turns ``<`` in any text into an entity."""
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(text)
