"""The report of a `fedlm experiment` output (results.json), read generically.

A "methods" list of dicts gives a table (a row per method, a column per number in it) and a
bar chart per column whose value differs between methods; a list of dicts inside a method
(its "curve": a point per round) gives a line chart per number in the points, a line per
method. Every other entry of results.json is listed as a fact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedlm.report.page import anchor_of, html_page, section
from fedlm.report.records import Path, format_value, is_number, walk_numbers
from fedlm.report.svg import Series, bar_chart, line_chart
from fedlm.report.tables import facts_table, html_table

METHODS_KEY = "methods"
X_KEY = "round"


def is_curve(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(point, Mapping) for point in value)


def method_name(method: Mapping[str, Any], index: int) -> str:
    return str(method.get("name", f"method {index + 1}"))


def method_numbers(method: Mapping[str, Any]) -> dict[Path, float]:
    """Every number of a method but those in its curves."""
    return {path: value for path, value in walk_numbers(dict(method)) if not is_curve(method.get(path[0]))}


def methods_table(methods: Sequence[Mapping[str, Any]]) -> tuple[str, list[Path], list[dict[Path, float]]]:
    """The table (name, label, a column per number), its columns and each method's numbers."""
    numbers = [method_numbers(m) for m in methods]
    columns: dict[Path, None] = {}
    for row in numbers:
        columns.update(dict.fromkeys(row))
    rows = [[method_name(m, i), m.get("label", ""), *(row.get(c) for c in columns)]
            for i, (m, row) in enumerate(zip(methods, numbers, strict=True))]
    headers = ["method", "label", *(".".join(c) for c in columns)]
    return html_table(headers, rows, name="methods"), list(columns), numbers


def bar_charts(methods: Sequence[Mapping[str, Any]], columns: Sequence[Path], numbers: Sequence[dict[Path, float]]) -> str:
    """A bar chart per column whose values differ between methods; the other columns named under them."""
    charts, constant = [], []
    for column in columns:
        values = [row.get(column) for row in numbers]
        if len({v for v in values if v is not None}) <= 1:
            constant.append(".".join(column))
            continue
        bars = [(method_name(m, i), value) for i, (m, value) in enumerate(zip(methods, values, strict=True))]
        key = ".".join(column)
        charts.append(bar_chart(key=key, title=key, bars=bars))
    note = (f'<p class="note">In the table only (one value for every method that has it): {", ".join(constant)}.</p>'
            if constant else "")
    return f'<div class="grid">{"".join(charts)}</div>{note}'


def curve_charts(methods: Sequence[Mapping[str, Any]]) -> str:
    """A line chart per number of the curves' points (x: the point's round), a line per method with that curve."""
    fields: dict[tuple[str, str], None] = {}
    for method in methods:
        for key, value in method.items():
            if is_curve(value):
                fields.update(dict.fromkeys((key, field) for point in value for field, v in point.items()
                                            if field != X_KEY and is_number(v)))
    charts = []
    for curve, field in fields:
        series = []
        for i, method in enumerate(methods):
            points = method.get(curve)
            if is_curve(points):
                xy = tuple((p[X_KEY] if is_number(p.get(X_KEY)) else j, p.get(field)) for j, p in enumerate(points))
                series.append(Series(method_name(method, i), xy, (METHODS_KEY, str(i), curve, field), color=i))
        charts.append(line_chart(key=f"{curve}.{field}", title=f"{curve}: {field}", series=series))
    return f'<div class="grid">{"".join(charts)}</div>' if charts else ""


def experiment_sections(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(title, HTML) of the methods table, the bar charts, the curves and the facts."""
    methods = [m for m in results.get(METHODS_KEY, []) if isinstance(m, Mapping)]
    sections = []
    if methods:
        table, columns, numbers = methods_table(methods)
        sections.append(("Methods", table))
        sections.append(("Per method", bar_charts(methods, columns, numbers)))
        if curves := curve_charts(methods):
            sections.append(("Per round", curves))
    facts = {k: v for k, v in results.items() if k != METHODS_KEY}
    sections.append(("Experiment", facts_table(facts, name="facts")))
    return sections


def render_experiment_report(results: Mapping[str, Any], *, title: str = "fedlm experiment report") -> str:
    """The whole self-contained HTML page of an experiment's results."""
    sections = experiment_sections(results)
    body = "".join(section(name, html, anchor=anchor_of(name)) for name, html in sections)
    methods = len(results.get(METHODS_KEY, []))
    subtitle = f"model {format_value(results.get('model'))} · {methods} methods"
    return html_page(title, body, subtitle=subtitle, sections=[name for name, _ in sections])
