"""The HTML document around the report's sections: inline CSS only, nothing fetched, no script."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1860px;
       padding: 16px 24px 48px; color: #1d2330; background: #fbfbfd; }
h1 { font-size: 22px; margin: 4px 0 2px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #dde; }
.subtitle { color: #5a6172; margin: 0 0 10px; } nav a { margin-right: 14px; color: #35608f; }
.grid { display: flex; flex-wrap: wrap; gap: 14px; }
figure.chart { margin: 0; padding: 8px 10px 6px; background: #fff; border: 1px solid #e3e5ec; border-radius: 6px; }
figcaption { font-size: 13px; margin-bottom: 2px; } figcaption code { color: #6b7285; font-size: 11px; }
svg.plot { display: block; overflow: visible; }
svg .grid { stroke: #eceef3; } svg .tick, svg .axis-label, svg .bar-label { font-size: 10.5px; fill: #5a6172; }
svg .line { fill: none; stroke-width: 1.8; } svg .point { stroke: #fff; stroke-width: 0.8; }
svg .reference { stroke: #c0392b; stroke-width: 1.4; stroke-dasharray: 6 4; }
svg .alert-mark { stroke: #e67e22; stroke-width: 5; stroke-opacity: 0.25; }
svg .zero { stroke: #888; }
ul.legend { list-style: none; padding: 0; margin: 4px 0 0; display: flex; flex-wrap: wrap; gap: 4px 12px;
            font-size: 11.5px; max-width: 400px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; }
.swatch.reference { background: repeating-linear-gradient(90deg, #c0392b 0 4px, transparent 4px 6px); height: 3px; }
.table-wrap { overflow-x: auto; } table { border-collapse: collapse; font-size: 12.5px; background: #fff; }
th, td { border: 1px solid #e3e5ec; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f1f3f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.alerts td:last-child, table.facts td:last-child, table.config td:last-child { white-space: normal; text-align: left; }
tr.current td { background: #eaf4ea; font-weight: 600; }
.note { color: #5a6172; } details summary { cursor: pointer; color: #35608f; margin: 6px 0; }
"""


def section(title: str, body: str, *, anchor: str) -> str:
    return f'<section id="{escape(anchor, quote=True)}"><h2>{escape(title)}</h2>{body}</section>'


def anchor_of(title: str) -> str:
    return "-".join(title.lower().split())


def html_page(title: str, body: str, *, subtitle: str = "", sections: Sequence[str] = ()) -> str:
    """A whole HTML document: title, a line under it, links to the sections, then `body`."""
    nav = "".join(f'<a href="#{anchor_of(s)}">{escape(s)}</a>' for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            f'<h1>{escape(title)}</h1><p class="subtitle">{escape(subtitle)}</p><nav>{nav}</nav>{body}</body></html>\n')
