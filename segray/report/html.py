"""The page: one self-contained HTML file, styles and scripts inline, images as ``data:`` URIs.

    page = Page("segray report: runs/tune")
    page.section("search", "Search", [heading("Best trial"), table(frame), image(png, "plot")])
    Path("report.html").write_text(page.render())

Nothing in the page asks the network for anything: it opens from a file, an e-mail attachment
or an object store. Tables whose class is ``sortable`` sort by a column when its header is
clicked (numbers numerically, missing values last; a second click reverses the order).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from segray.version import __version__

__all__ = [
    "Page",
    "cards",
    "data_uri",
    "esc",
    "fmt",
    "gallery",
    "heading",
    "image",
    "kv_table",
    "legend",
    "note",
    "row",
    "table",
]


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A cell's text: floats to 4 significant places, missing values as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def _sort_key(value: Any) -> str:
    """``data-v`` of a cell: a number the script compares numerically, else empty (text)."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return repr(float(value))
    return ""


def heading(text: str, level: int = 3) -> str:
    return f"<h{level}>{esc(text)}</h{level}>"


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    sortable: bool = True,
    table_id: str | None = None,
    row_class: Iterable[str] | None = None,
) -> str:
    """A table of dict rows; ``columns`` picks and orders them (default: the first row's)."""
    if not rows:
        return note("(no rows)")
    columns = list(columns or rows[0].keys())
    classes = list(row_class) if row_class is not None else [""] * len(rows)
    head = "".join(f'<th title="sort by {esc(c)}">{esc(c)}</th>' for c in columns)
    body = []
    for row, cls in zip(rows, classes, strict=True):
        cells = []
        for c in columns:
            v = row.get(c)
            key = _sort_key(v)
            attr = f' data-v="{key}"' if key else ""
            cells.append(f"<td{attr}>{esc(fmt(v))}</td>")
        body.append(f'<tr class="{esc(cls)}">' + "".join(cells) + "</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    cls = "sortable" if sortable else "plain"
    return (
        f'<div class="scroll"><table class="{cls}"{ident}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def kv_table(items: dict[str, Any]) -> str:
    """A two-column key / value table (not sortable)."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in items.items())
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


def image(png: bytes, alt: str, *, caption: str | None = None, cls: str = "plot") -> str:
    """An embedded image (PNG bytes), with an optional caption."""
    tag = f'<img class="{cls}" alt="{esc(alt)}" src="{data_uri(png)}">'
    if caption is None:
        return f"<figure>{tag}</figure>"
    return f"<figure>{tag}<figcaption>{esc(caption)}</figcaption></figure>"


def row(parts: Sequence[str]) -> str:
    """Figures next to each other, wrapping on narrow screens."""
    return f'<div class="row">{"".join(parts)}</div>'


def gallery(items: Sequence[tuple[bytes, str]], *, empty: str = "(nothing to show)") -> str:
    """A grid of (PNG bytes, caption) tiles."""
    if not items:
        return note(empty)
    tiles = "".join(image(png, cap, caption=cap, cls="tile") for png, cap in items)
    return f'<div class="gallery">{tiles}</div>'


def legend(entries: Sequence[tuple[str, tuple[int, int, int]]]) -> str:
    """Colour swatches with their meaning, e.g. ``[("false positive", (255, 59, 48))]``."""
    spans = "".join(
        f'<span class="swatch" style="background: rgb{rgb}"></span>{esc(label)}'
        for label, rgb in entries
    )
    return f'<p class="legend">{spans}</p>'


@dataclass
class _Section:
    anchor: str
    title: str
    parts: list[str]


@dataclass
class Page:
    """Sections in order, rendered with a table of contents at the top."""

    title: str
    source: str = ""
    sections: list[_Section] = field(default_factory=list)

    def section(self, anchor: str, title: str, parts: Sequence[str]) -> None:
        self.sections.append(_Section(anchor, title, list(parts)))

    def render(self) -> str:
        toc = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in self.sections)
        body = "".join(
            f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>{"".join(s.parts)}</section>'
            for s in self.sections
        )
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        meta = f"{esc(self.source)} · segray {esc(__version__)} · {when}"
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(self.title)}</title><style>{_CSS}</style></head><body>"
            f'<header><h1>{esc(self.title)}</h1><p class="meta">{meta}</p>'
            f"<nav>{toc}</nav></header><main>{body}</main>"
            f"<script>{_JS}</script></body></html>\n"
        )


_CSS = """
:root { --fg: #1d1d1f; --muted: #6e6e73; --line: #d2d2d7; --bg: #fff; --band: #f5f5f7;
        --accent: #0a66c2; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header { padding: 16px 28px 8px; border-bottom: 1px solid var(--line); background: var(--band); }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 12px; padding-top: 8px; border-top: 2px solid var(--accent); }
h3 { font-size: 15px; margin: 22px 0 8px; }
.meta, .note { color: var(--muted); margin: 4px 0; }
nav a { margin-right: 16px; color: var(--accent); text-decoration: none; font-weight: 600; }
main { padding: 8px 28px 40px; max-width: 1400px; }
section { margin: 28px 0 40px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 120px;
        background: var(--band); }
.card b { display: block; font-size: 20px; }
.card span { color: var(--muted); font-size: 12px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left;
         white-space: nowrap; }
td[data-v] { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; background: var(--band); }
table.sortable th:hover { background: #e8e8ed; }
th.asc::after { content: " \\25B2"; font-size: 10px; }
th.desc::after { content: " \\25BC"; font-size: 10px; }
table.kv th { font-weight: 600; background: none; }
tr.best td { background: #e7f5e9; font-weight: 600; }
tr.stopped td { color: #8a5a00; }
tr.error td { color: #b3261e; }
figure { margin: 8px 0; display: inline-block; vertical-align: top; }
img.plot { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; max-width: 260px; overflow-wrap: anywhere; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery figure { margin: 0; }
img.tile { width: 256px; height: auto; image-rendering: pixelated; border: 1px solid var(--line); }
.legend { margin: 6px 0; }
.swatch { display: inline-block; width: 14px; height: 14px; margin: 0 6px 0 14px;
          vertical-align: -2px; border: 1px solid #0003; }
.legend .swatch:first-child { margin-left: 0; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.row figure { max-width: calc(50% - 8px); }
img.wide { max-width: min(100%, 880px); height: auto; border: 1px solid var(--line); }
"""

# Sort a table.sortable by the clicked column: cells with data-v numerically, others as text,
# empty cells last; a second click on the same header reverses the order.
_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var desc = th.classList.contains("asc");
      Array.prototype.forEach.call(heads, function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(desc ? "desc" : "asc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        if (cell.hasAttribute("data-v")) return parseFloat(cell.getAttribute("data-v"));
        var text = cell.textContent.trim();
        return text === "\\u2013" ? null : text;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) return (x === null) - (y === null);
        var c = (typeof x === "number" && typeof y === "number") ? x - y
              : String(x).localeCompare(String(y), undefined, {numeric: true});
        return desc ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def cards(items: dict[str, Any]) -> str:
    """Headline numbers as small cards: value on top, label below."""
    inner = "".join(
        f'<div class="card"><b>{esc(fmt(v))}</b><span>{esc(k)}</span></div>'
        for k, v in items.items()
    )
    return f'<div class="cards">{inner}</div>'
