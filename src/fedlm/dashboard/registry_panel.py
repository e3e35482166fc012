"""The registry on the coordinator's dashboard: a row per model version, with a "make production" button.

Pure: the versions as service.registry.list_versions gives them (version, round, status,
production, metrics) in, HTML out. The buttons do nothing by themselves: the page's script
(dashboard.page) posts a button's `data-production-version` to the panel's `data-action`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from fedlm.report.records import format_value, is_number

COLUMNS = (("eval loss", "eval_loss"), ("train loss", "train_loss"), ("accepted", "accepted"), ("ε", "epsilon"))
NOTE = ("Production is the version the registry marks as the one to serve (the * of fedlm models list); the canary gate "
        "compares each new version with it, and the next version that passes the gate becomes production. Making "
        "another version production does not move training, which goes on from the newest version; with "
        "registry.on_regression = \"rollback\" a version that fails the gate sends training back to production, "
        "whichever version you made production here.")


def cell(value: Any) -> str:
    number = ' class="num"' if is_number(value) else ""
    return f"<td{number}>{escape(format_value(value))}</td>"


def shown_columns(versions: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The COLUMNS some version has a figure for (no ε column in a run without DP)."""
    return [(head, key) for head, key in COLUMNS if any((v.get("metrics") or {}).get(key) is not None for v in versions)]


def version_row(version: Mapping[str, Any], columns: Sequence[tuple[str, str]]) -> str:
    number = int(version["version"])
    metrics = version.get("metrics") or {}
    if version.get("production"):
        action, mark = "<td>production</td>", ' class="current"'
    else:
        action, mark = (f'<td><button type="button" data-production-version="{number}">make production</button></td>', "")
    figures = "".join(cell(metrics.get(key)) for _, key in columns)
    return (f'<tr{mark} data-version="{number}">{cell(number)}{cell(version.get("round"))}'
            f'{cell(version.get("status"))}{figures}{action}</tr>')


def registry_panel(versions: Sequence[Mapping[str, Any]], *, action: str) -> str:
    """The table of `versions` inside an element whose `data-action` is the URL the buttons post to."""
    columns = shown_columns(versions)
    headers = "".join(f"<th>{escape(h)}</th>" for h in ("version", "round", "status", *(h for h, _ in columns), ""))
    rows = "".join(version_row(v, columns) for v in versions)
    return (f'<div class="registry" data-action="{escape(action, quote=True)}"><p class="note">{escape(NOTE)}</p>'
            f'<p class="note" id="registry-message" role="status"></p>'
            f'<div class="table-wrap"><table class="registry" data-table="registry"><thead><tr>{headers}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div></div>")
