"""The report of one run: charts per section, alerts, model versions, the run's summary and config.

Takes the metrics lines (as dicts), the run's config (config.toml as a dict) and its summary
(summary.json, or None while a run is in progress) and returns HTML: `run_sections` gives
the fragments a live dashboard can place, `render_run_report` the whole page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedlm.report.page import anchor_of, html_page, section
from fedlm.report.series import Chart, alert_marks, run_charts
from fedlm.report.svg import line_chart
from fedlm.report.tables import alerts_table, facts_table, versions_table

IN_VERSIONS_TABLE = ("base", "final", "base_sites", "final_sites")  # summary figures the versions table already shows


def chart_grids(charts: Sequence[Chart], marks: Sequence[tuple[float, str]]) -> list[tuple[str, str]]:
    """(section title, a grid of its charts) in the charts' section order."""
    grids: dict[str, list[str]] = {}
    for chart in charts:
        svg = line_chart(key=chart.key, title=chart.title, series=chart.series, references=chart.references, marks=marks)
        grids.setdefault(chart.section, []).append(svg)
    return [(title, f'<div class="grid">{"".join(figures)}</div>') for title, figures in grids.items()]


def base_line(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The untrained base model's evaluation from summary.json, shaped like a metrics line (version 0)."""
    if not summary or not isinstance(summary.get("base"), Mapping):
        return None
    line: dict[str, Any] = {"eval": summary["base"]}
    if isinstance(summary.get("base_sites"), Mapping):
        line["sites"] = summary["base_sites"]
    return line


def versions_section(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None, current_note: str) -> str:
    current = summary.get("version") if summary else None
    marked = ("the run's final version, the adapter in adapter/" if current_note.startswith("adapter/")
              else f"the {current_note} version")
    note = ("Each round that commits a global adapter makes a version; the figures are its evaluation after that "
            f"round. The marked row is {marked}.")
    table = versions_table(records, base=base_line(summary), current_version=current, current_note=current_note)
    return f'<p class="note">{note}</p>{table}'


def run_sections(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any], summary: Mapping[str, Any] | None = None,
                 *, current_note: str = "adapter/ (final)") -> list[tuple[str, str]]:
    """(title, HTML) of every section: the charts by section, alerts, versions, the run's summary and config."""
    sections = chart_grids(run_charts(records, config), alert_marks(records))
    sections.append(("Alerts", alerts_table(records)))
    sections.append(("Model versions", versions_section(records, summary, current_note)))
    if summary:
        facts = {k: v for k, v in summary.items() if k not in IN_VERSIONS_TABLE}
        sections.append(("Run", facts_table(facts, name="facts")))
    if config:
        sections.append(("Config", f"<details><summary>config.toml</summary>{facts_table(config, name='config')}</details>"))
    return sections


def subtitle_of(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any], summary: Mapping[str, Any] | None) -> str:
    model = (summary or {}).get("model") or config.get("model", {}).get("name", "")
    status = (summary or {}).get("status", "in progress")
    return f"model {model} · {len(records)} rounds · {status}"


def render_run_report(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any],
                      summary: Mapping[str, Any] | None = None, *, title: str = "fedlm run report") -> str:
    """The whole self-contained HTML page of a run."""
    sections = run_sections(records, config, summary)
    body = "".join(section(name, html, anchor=anchor_of(name)) for name, html in sections)
    return html_page(title, body, subtitle=subtitle_of(records, config, summary), sections=[name for name, _ in sections])
