"""The report as one offline HTML page: plotly.js inlined once, each figure a ``<div>``, tables as HTML
with a few lines of JavaScript to sort them. Only markup here; what goes in is decided in ``report.py``."""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

__all__ = ["Section", "figure_div", "key_values", "page", "table"]

_CSS = """
:root { --ink:#1d2430; --muted:#5b6472; --line:#e3e6ea; --accent:#1f6fd1; --bg:#f7f8fa; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.5 Inter, "Segoe UI", Helvetica, Arial, sans-serif; color:var(--ink); background:var(--bg); }
header { background:#fff; border-bottom:1px solid var(--line); padding:18px 32px 10px; position:sticky; top:0; z-index:10; }
header h1 { margin:0 0 2px; font-size:22px; }
header p { margin:0 0 8px; color:var(--muted); }
nav a { margin-right:16px; color:var(--accent); text-decoration:none; font-weight:500; }
main { padding:12px 32px 48px; }
section { scroll-margin-top:110px; background:#fff; border:1px solid var(--line); border-radius:8px; margin:18px 0; padding:16px 20px; overflow-x:auto; }
section h2 { margin:0 0 4px; font-size:18px; }
section > p.intro { margin:0 0 12px; color:var(--muted); max-width:1100px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 14px; min-width:150px; background:var(--bg); }
.card .v { font-size:20px; font-weight:600; }
.card .k { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; font-size:13px; }
th, td { border-bottom:1px solid var(--line); padding:5px 9px; text-align:left; vertical-align:top; }
th { background:var(--bg); position:sticky; top:0; }
table.sortable th { cursor:pointer; user-select:none; white-space:nowrap; }
table.sortable th::after { content:" \\2195"; color:#aab; }
table.sortable th.asc::after { content:" \\2191"; color:var(--ink); }
table.sortable th.desc::after { content:" \\2193"; color:var(--ink); }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td code, .cmd { font:12px/1.4 ui-monospace, Menlo, Consolas, monospace; }
.cmd { background:#f0f3f7; border-radius:4px; padding:2px 6px; display:inline-block; max-width:330px; }
.cfg { font:11px/1.35 ui-monospace, Menlo, Consolas, monospace; color:var(--muted); white-space:pre; }
.badge { display:inline-block; font-size:11px; border-radius:10px; padding:0 7px; background:#e8f0fb; color:var(--accent); margin-left:4px; }
table.kv th { width:190px; position:static; }
.links a { margin-right:10px; }
footer { color:var(--muted); padding:0 32px 32px; font-size:12px; }
"""

_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(asc ? "asc" : "desc");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col], v = cell.getAttribute("data-sort");
        v = v === null ? cell.textContent.trim() : v;
        var n = parseFloat(v);
        return isNaN(n) ? v.toLowerCase() : n;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


@dataclass
class Section:
    id: str
    title: str
    body: str  # HTML
    intro: str = ""  # HTML


@dataclass
class Cell:
    """A table cell: its HTML, the value to sort by, and whether it is a number (right-aligned)."""

    html: str
    sort: str | float | None = None
    num: bool = False


@dataclass
class Page:
    title: str
    subtitle: str
    sections: list[Section] = field(default_factory=list)
    footer: str = ""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def figure_div(fig: go.Figure, div_id: str, *, links: Mapping[str, str] | None = None) -> str:
    """A figure without plotly.js (the page carries it once), with links to its exported files."""
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                      config={"displaylogo": False, "responsive": False})
    width, height = fig.layout.width or 1000, fig.layout.height or 600
    out = f'<div class="figure" style="width:{int(width)}px;height:{int(height)}px">{div}</div>'
    if links:
        out += '<p class="links">' + "".join(f'<a href="{esc(href)}">{esc(label)}</a>'
                                              for label, href in links.items()) + "</p>"
    return out


def table(header: Sequence[str], rows: Sequence[Sequence[Cell | str]], *, table_id: str, sortable: bool = True) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for c in row:
            c = c if isinstance(c, Cell) else Cell(esc(c))
            attrs = (' class="num"' if c.num else "") + (f' data-sort="{esc(c.sort)}"' if c.sort is not None else "")
            cells.append(f"<td{attrs}>{c.html}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = ' class="sortable"' if sortable else ""
    return f'<table id="{esc(table_id)}"{cls}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def key_values(items: Mapping[str, str], *, table_id: str) -> str:
    """A two-column table; values are HTML already."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in items.items())
    return f'<table class="kv" id="{esc(table_id)}"><tbody>{rows}</tbody></table>'


def cards(items: Mapping[str, str]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>' for k, v in items.items()
    ) + "</div>"


def page(p: Page) -> str:
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in p.sections)
    body = "".join(
        f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>'
        + (f'<p class="intro">{s.intro}</p>' if s.intro else "") + s.body + "</section>"
        for s in p.sections
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(p.title)}</title><style>{_CSS}</style>"
        # plotly.js exactly once for every figure of the page: the file works offline.
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"<header><h1>{esc(p.title)}</h1><p>{p.subtitle}</p><nav>{nav}</nav></header>"
        f"<main>{body}</main><footer>{p.footer}</footer><script>{_SORT_JS}</script></body></html>\n"
    )
