"""HTML tables of the report: model versions with their metrics, alerts per round, facts of the run and its config."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from html import escape
from typing import Any

from fedlm.report.records import Path, alert_text, flatten, format_value, is_number, round_of, walk_alerts

NUMBER = ' class="num"'  # right-aligned
VERSION_KEYS = ("eval", "sites", "train_loss")  # the figures a version is judged by: its evaluation and its round's train loss


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, name: str, highlight: int | None = None) -> str:
    """A <table>; cells are values (format_value) and escaped; the row at `highlight` is marked current."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        mark = ' class="current"' if i == highlight else ""
        cells = "".join(f'<td{NUMBER if is_number(cell) else ""}>{escape(format_value(cell))}</td>' for cell in row)
        body.append(f"<tr{mark}>{cells}</tr>")
    return (f'<div class="table-wrap"><table class="{escape(name)}" data-table="{escape(name)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def walk_scalars(value: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path, value) for every leaf of nested dicts; a list is one leaf."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from walk_scalars(item, (*prefix, str(key)))
    else:
        yield prefix, value


def facts_table(facts: Mapping[str, Any], *, name: str) -> str:
    """Two columns, setting and value, for every leaf of `facts` (a summary, a config) that is not None."""
    rows = [(".".join(path), value) for path, value in walk_scalars(facts) if value is not None and path]
    return html_table(("key", "value"), rows, name=name)


def version_figures(record: Mapping[str, Any]) -> dict[Path, float]:
    return {path: value for path, value in flatten(dict(record)).items() if path[0] in VERSION_KEYS}


def latest_per_version(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The last line of each version, in version order (a round that committed nothing keeps its version)."""
    latest: dict[Any, Mapping[str, Any]] = {}
    for i, record in enumerate(records):
        latest[record.get("version", round_of(dict(record), i))] = record
    return list(latest.values())


def versions_table(records: Sequence[Mapping[str, Any]], *, base: Mapping[str, Any] | None = None,
                   current_version: Any = None, current_note: str = "current") -> str:
    """A row per model version with its figures; `base` (a line-shaped dict) is the untrained start, version 0.

    The row of `current_version` (the last version when None) is marked and says `current_note`
    (in a simulation run: the adapter/ it exported).
    """
    rows_in = ([{"version": 0, "round": 0, **base}] if base else []) + latest_per_version(records)
    figures = [version_figures(r) for r in rows_in]
    seen: dict[Path, None] = {}
    for figure in figures:
        seen.update(dict.fromkeys(figure))
    columns = sorted(seen, key=lambda path: VERSION_KEYS.index(path[0]))  # evaluation first; stable within each key
    current = current_version if current_version is not None else rows_in[-1].get("version") if rows_in else None
    highlight = next((i for i, r in enumerate(rows_in) if r.get("version") == current), None)
    rows = []
    for i, (record, figure) in enumerate(zip(rows_in, figures, strict=True)):
        note = current_note if i == highlight else "base model" if base and i == 0 else ""
        rows.append([record.get("version"), record.get("round"), *(figure.get(c) for c in columns), note])
    headers = ["version", "round", *(".".join(c) for c in columns), "model"]
    return html_table(headers, rows, name="versions", highlight=highlight)


def alert_rows(records: Sequence[Mapping[str, Any]]) -> list[tuple[Any, str, str]]:
    """(round, where in the line, the alert in words) for every alert of every line."""
    return [(round_of(dict(r), i), ".".join(path), alert_text(alert))
            for i, r in enumerate(records) for path, alert in walk_alerts(dict(r))]


def alerts_table(records: Sequence[Mapping[str, Any]]) -> str:
    rows = alert_rows(records)
    if not rows:
        return '<p class="note">No alerts in any round.</p>'
    return html_table(("round", "where", "alert"), rows, name="alerts")
