"""Inline SVG charts: a line chart per metric over rounds, a bar chart per metric over methods.

Every point (circle) and bar (rect) carries its exact number in data- attributes (data-x,
data-y or data-value: Python's repr, which parses back to the same double) and a <title>
tooltip, so a reader and a test read the plotted numbers off the page. A None or
non-finite value is not drawn, and the line breaks there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from fedlm.report.records import Path, format_value, is_plottable

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
WIDTH, HEIGHT = 400, 230
LEFT, RIGHT, TOP, BOTTOM = 62, 14, 12, 34  # room for the y tick labels and the x axis


@dataclass(frozen=True)
class Series:
    """One line: its label, (x, y) points (y None where the round lacks the metric) and the metric's path."""

    label: str
    points: tuple[tuple[float, float | None], ...]
    path: Path = ()
    color: int | None = None  # an index into PALETTE, to keep a method's colour across charts; None: its place in the chart


@dataclass(frozen=True)
class Reference:
    """A horizontal line at a fixed value: a target or a threshold."""

    label: str
    value: float


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)  # 5.3 / 0.05 is 105.99999999999999
    return [round(i * step, 12) for i in range(first, last + 1)]


def tick_label(value: float, step: float) -> str:
    """A tick as a reader wants it: 2.5M rather than 2500000, 0.0007 with the step's decimals."""
    size = abs(value)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= scale and step >= scale / 100:
            return f"{value / scale:.3g}{suffix}"
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{decimals}f}" if decimals <= 6 else f"{value:.2g}"


def attr(value: object) -> str:
    return escape(str(value), quote=True)


def number_attr(value: float) -> str:
    """The exact number: repr of a float reads back as the same double in Python and in JavaScript."""
    return repr(int(value)) if isinstance(value, int) else repr(float(value))


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def y_grid(ticks: Sequence[float], place: Callable[[float], float]) -> list[str]:
    """Horizontal grid lines with their labels at the left; `place` maps a value to its pixel row."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    return [f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{place(t):.2f}" y2="{place(t):.2f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{place(t) + 4:.2f}" text-anchor="end">{tick_label(t, step)}</text>'
            for t in ticks]


def x_grid(ticks: Sequence[float], place: Callable[[float], float], bottom: float) -> list[str]:
    """Vertical grid lines with their labels under `bottom`; `place` maps a value to its pixel column."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    return [f'<line class="grid" x1="{place(t):.2f}" x2="{place(t):.2f}" y1="{TOP}" y2="{bottom}"/>'
            f'<text class="tick" x="{place(t):.2f}" y="{bottom + 15}" text-anchor="middle">{tick_label(t, step)}</text>'
            for t in ticks]


def x_ticks(xs: Sequence[float]) -> list[float]:
    """Whole-number ticks for rounds: a step of at least 1."""
    lo, hi = min(xs), max(xs)
    if hi - lo < 5:
        return [float(v) for v in range(math.floor(lo) - (hi == lo), math.ceil(hi) + 1 + (hi == lo))]
    return [t for t in nice_ticks(lo, hi) if t == int(t)] or [lo, hi]


def segments(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """Runs of drawable points: a None or non-finite value breaks the line."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if is_plottable(y):
            runs[-1].append((x, y))
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if run]


def point_markup(series: Series, x: float, y: float, px: float, py: float, fill: str, x_label: str) -> str:
    tooltip = f"{series.label} · {x_label} {format_value(x)}: {format_value(y, 10)}"
    return (f'<circle class="point" cx="{px:.2f}" cy="{py:.2f}" r="3" fill="{fill}" data-series="{attr(series.label)}" '
            f'data-path="{attr(json.dumps(list(series.path)))}" data-x="{number_attr(x)}" data-y="{number_attr(y)}">'
            f'<title>{escape(tooltip)}</title></circle>')


def caption(key: str, title: str) -> str:
    """The chart's title, and the metric's key (as metrics.jsonl spells it) where the title differs."""
    code = f" <code>{escape(key)}</code>" if key != title else ""
    return f"<figcaption><b>{escape(title)}</b>{code}</figcaption>"


def legend(entries: Sequence[tuple[str, str]], references: Sequence[Reference]) -> str:
    """Colour and label of each series, then the reference lines."""
    items = [f'<li><span class="swatch" style="background:{fill}"></span>{escape(label)}</li>' for label, fill in entries]
    items += [f'<li><span class="swatch reference"></span>{escape(r.label)} = {format_value(r.value)}</li>' for r in references]
    return f'<ul class="legend">{"".join(items)}</ul>'


def svg_root(title: str, body: Sequence[str], height: float) -> str:
    return (f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
            f'height="{height}" role="img" aria-label="{attr(title)}"><title>{escape(title)}</title>{"".join(body)}</svg>')


def figure(key: str, title: str, svg: str, after: str = "") -> str:
    return f'<figure class="chart" data-chart="{attr(key)}">{caption(key, title)}{svg}{after}</figure>'


def series_markup(series: Sequence[Series], fills: Sequence[str], px: Callable[[float], float],
                  py: Callable[[float], float], x_label: str) -> list[str]:
    """A polyline per run of points and a circle per point; every other series dashed, so equal lines both show."""
    body = []
    for i, (s, fill) in enumerate(zip(series, fills, strict=True)):
        dash = ' stroke-dasharray="7 4"' if i % 2 else ""
        for run in segments(s.points):
            coords = " ".join(f"{px(x):.2f},{py(y):.2f}" for x, y in run)
            body.append(f'<polyline class="line" points="{coords}" stroke="{fill}"{dash} data-series="{attr(s.label)}"/>')
            body += [point_markup(s, x, y, px(x), py(y), fill, x_label) for x, y in run]
    return body


def marks_markup(marks: Sequence[tuple[float, str]], references: Sequence[Reference], px: Callable[[float], float],
                 py: Callable[[float], float]) -> list[str]:
    """A vertical band at each alert's x, a dashed horizontal line at each reference value."""
    body = [f'<line class="alert-mark" x1="{px(x):.2f}" x2="{px(x):.2f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" '
            f'data-x="{number_attr(x)}"><title>{escape(text)}</title></line>' for x, text in marks]
    body += [f'<line class="reference" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(r.value):.2f}" y2="{py(r.value):.2f}" '
             f'data-value="{number_attr(r.value)}"><title>{escape(r.label)} = {format_value(r.value)}</title></line>'
             for r in references]
    return body


def line_chart(*, key: str, title: str, series: Sequence[Series], references: Sequence[Reference] = (),
               marks: Sequence[tuple[float, str]] = (), x_label: str = "round") -> str:
    """A <figure> with one SVG line chart: a line and points per series, reference lines, and alert marks at x."""
    drawn = [(x, y) for s in series for x, y in s.points if is_plottable(y)]
    xs = [x for x, _ in drawn] + [x for x, _ in marks] or [0.0]
    ys = [y for _, y in drawn] + [r.value for r in references] or [0.0]
    xt, yt = x_ticks(xs), nice_ticks(min(ys), max(ys))

    def px(x: float) -> float:
        return LEFT + (x - xt[0]) / ((xt[-1] - xt[0]) or 1) * (WIDTH - LEFT - RIGHT)

    def py(y: float) -> float:
        return HEIGHT - BOTTOM - (y - yt[0]) / ((yt[-1] - yt[0]) or 1) * (HEIGHT - TOP - BOTTOM)

    fills = [color(i if s.color is None else s.color) for i, s in enumerate(series)]
    body = [*y_grid(yt, py), *x_grid(xt, px, HEIGHT - BOTTOM),
            f'<text class="axis-label" x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 4}" text-anchor="middle">{escape(x_label)}</text>',
            *marks_markup(marks, references, px, py), *series_markup(series, fills, px, py, x_label)]
    alone = len(series) == 1 and series[0].label == key and not references  # the caption names it already
    keys = "" if alone else legend([(s.label, fill) for s, fill in zip(series, fills, strict=True)], references)
    return figure(key, title, svg_root(title, body, HEIGHT), keys)


def bar_chart(*, key: str, title: str, bars: Sequence[tuple[str, float | None]]) -> str:
    """A <figure> with a horizontal bar per label; a None or non-finite value gets no bar."""
    label_width, row = 150, 22
    height = TOP + BOTTOM + row * max(len(bars), 1)
    values = [v for _, v in bars if is_plottable(v)]
    ticks = nice_ticks(min([0.0, *values]), max([0.0, *values]))

    def px(v: float) -> float:
        return label_width + (v - ticks[0]) / ((ticks[-1] - ticks[0]) or 1) * (WIDTH - label_width - RIGHT)

    body = x_grid(ticks, px, height - BOTTOM)
    for i, (label, value) in enumerate(bars):
        y = TOP + i * row
        body.append(f'<text class="bar-label" x="{label_width - 6}" y="{y + row / 2 + 4:.2f}" text-anchor="end">{escape(label)}</text>')
        if is_plottable(value):
            x0, x1 = sorted((px(0.0), px(value)))
            body.append(f'<rect class="bar" x="{x0:.2f}" y="{y + 3}" width="{max(x1 - x0, 0.5):.2f}" height="{row - 6}" '
                        f'fill="{color(i)}" data-label="{attr(label)}" data-value="{number_attr(value)}">'
                        f'<title>{escape(label)}: {escape(format_value(value, 10))}</title></rect>')
    body.append(f'<line class="zero" x1="{px(0.0):.2f}" x2="{px(0.0):.2f}" y1="{TOP}" y2="{height - BOTTOM}"/>')
    return figure(key, title, svg_root(title, body, height))
