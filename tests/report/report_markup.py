"""Read a report's markup back in tests: the elements of a kind with their attributes and text, without a browser."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser


class ElementCollector(HTMLParser):
    """Every start tag's attributes (plus its direct <title> text as "title"), in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str]]] = []
        self.open: list[dict[str, str]] = []
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = {k: v or "" for k, v in attrs}
        self.found.append((tag, element))
        self.in_title = tag == "title"
        if tag not in ("title",) and not self.is_void(tag):
            self.open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif self.open and not self.is_void(tag):
            self.open.pop()

    def handle_data(self, data: str) -> None:
        if self.in_title and self.open:
            self.open[-1]["title"] = self.open[-1].get("title", "") + data

    @staticmethod
    def is_void(tag: str) -> bool:
        return tag in ("meta", "br", "img", "input", "link")


def elements(html: str, tag: str, cls: str | None = None) -> list[dict[str, str]]:
    """The attributes of every <tag> (with class `cls`, when given) in `html`."""
    collector = ElementCollector()
    collector.feed(html)
    return [attrs for name, attrs in collector.found if name == tag and (cls is None or cls in attrs.get("class", "").split())]


def points(html: str) -> list[tuple[tuple[str, ...], float, float]]:
    """(metric path, x, y) of every plotted point, read from its data- attributes."""
    return [(tuple(json.loads(p["data-path"])), float(p["data-x"]), float(p["data-y"])) for p in elements(html, "circle", "point")]


def table_rows(html: str, name: str) -> list[list[str]]:
    """The text of every body cell of the table named `name`, row by row."""
    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.rows: list[list[str]] = []
            self.inside = self.cell = False

        def handle_starttag(self, tag, attrs):
            self.inside = self.inside or (tag == "table" and dict(attrs).get("data-table") == name)
            if self.inside and tag == "tr":
                self.rows.append([])
            if self.inside and tag == "td":
                self.cell = True
                self.rows[-1].append("")

        def handle_endtag(self, tag):
            self.cell = self.cell and tag != "td"
            self.inside = self.inside and tag != "table"

        def handle_data(self, data):
            if self.cell:
                self.rows[-1][-1] += data

    parser = Rows()
    parser.feed(html)
    return [row for row in parser.rows if row]


def numbers(value, prefix=()):
    """(path, number) of every finite number in a metrics line, at any depth: what the charts must show. Lists (an
    "alerts" list) hold none: the report tables them."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, (*prefix, key))
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        yield prefix, value
