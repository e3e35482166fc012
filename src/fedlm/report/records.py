"""Metrics lines as the report reads them: parsed with their line numbers, flattened to numeric paths.

A path is a tuple of keys from the line's top level down to a number ("eval", "loss"); list
items count as keys "0", "1", ... Booleans and None are not numbers here; NaN and infinity
are numbers (a table shows them) but no chart can place them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

Path = tuple[str, ...]
ALERT_KINDS = ("kind", "name", "type", "code")  # the field that names an alert, first one present
ALERTS_KEY = "alerts"  # a list of alerts (dicts or strings) anywhere in a line: a table row and a chart marker, never a series


def parse_metrics_lines(text: str, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """Every line of a JSON-lines text as a dict; a blank, damaged or non-object line is refused by its number."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            raise ValueError(f"{name} line {number} is empty")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} line {number} is not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{name} line {number} holds a {type(record).__name__}, not a JSON object")
        records.append(record)
    if not records:
        raise ValueError(f"{name} holds no lines: the run has not finished a round yet")
    return records


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_plottable(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def walk_numbers(value: Any, prefix: Path = ()) -> Iterator[tuple[Path, float]]:
    """(path, number) for every number under `value`, in key order, skipping any alerts list (its numbers
    belong to the alerts: value, threshold, round)."""
    if is_number(value):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if not (key == ALERTS_KEY and isinstance(item, list)):  # a count of alerts is a number like any other
                yield from walk_numbers(item, (*prefix, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk_numbers(item, (*prefix, str(index)))


def flatten(record: dict[str, Any]) -> dict[Path, float]:
    """Every number in a line by its path: {("eval", "loss"): 5.45, ("round",): 1, ...}."""
    return dict(walk_numbers(record))


def dig(record: Any, path: Path) -> Any:
    """The value at `path`, or None where the line lacks it."""
    for key in path:
        if isinstance(record, dict):
            record = record.get(key)
        elif isinstance(record, list) and key.isdigit() and int(key) < len(record):
            record = record[int(key)]
        else:
            return None
    return record


def walk_alerts(value: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path of the list, alert) for every item of every alerts list under `value`."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == ALERTS_KEY and isinstance(item, list):
                yield from (((*prefix, key), alert) for alert in item)
            else:
                yield from walk_alerts(item, (*prefix, str(key)))


def round_of(record: dict[str, Any], index: int) -> float:
    """The line's round (its x on every chart); the line's position, from 1, when it names none."""
    value = record.get("round")
    return value if is_plottable(value) else index + 1


def alert_text(alert: Any) -> str:
    """An alert in one line: its kind first (kind, name, type or code, when it has one), then its other fields
    but its round (the report shows the round beside it)."""
    if not isinstance(alert, dict):
        return str(alert)
    head_key = next((key for key in ALERT_KINDS if key in alert), None)
    head = [str(alert[head_key])] if head_key else []
    rest = [f"{key}={format_value(value)}" for key, value in alert.items() if key not in (head_key, "round")]
    return " ".join([*head, *rest])


def format_value(value: Any, digits: int = 6) -> str:
    """A value as a table cell: numbers to `digits` significant figures, lists and dicts as compact JSON."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)
