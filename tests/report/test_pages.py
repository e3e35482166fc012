"""Whole pages from records: sections, the versions and alerts tables, an experiment's methods; nothing fetched."""

from __future__ import annotations

import re

from report_markup import elements, points, table_rows

from fedlm.report.experiment_report import render_experiment_report
from fedlm.report.run_report import render_run_report, run_sections

RECORDS = [
    {"round": 1, "version": 1, "cohort": 2, "accepted": 2, "train_loss": 5.5, "eval": {"loss": 5.25, "accuracy": 0.125}},
    {"round": 2, "version": 1, "cohort": 2, "accepted": 0, "train_loss": None, "eval": {"loss": 5.25, "accuracy": 0.125},
     "alerts": ["participation_drop"]},  # a round that committed nothing: still version 1
    {"round": 3, "version": 2, "cohort": 2, "accepted": 2, "train_loss": 5.0, "eval": {"loss": 4.75, "accuracy": 0.25},
     "monitor": {"alerts": [{"kind": "drift", "metric": "train_loss", "zscore": 4.5}]}},
]
SUMMARY = {"status": "completed", "model": "tiny", "version": 2, "base": {"loss": 5.5, "accuracy": 0.0}, "final": {"loss": 4.75}}
RESULTS = {
    "model": "tiny", "seed": 0, "budget": {"tokens": 256},
    "methods": [
        {"name": "base", "label": "base model", "held_out": {"loss": 5.5, "tokens": 124}, "seconds": 0.0},
        {"name": "fedavg", "label": "FedAvg", "held_out": {"loss": 5.25, "tokens": 124}, "seconds": 0.0, "epsilon": 3.5,
         "curve": [{"round": 0, "loss": 5.5}, {"round": 1, "loss": 5.25}]},
        {"name": "fedadam", "label": "FedAdam", "held_out": {"loss": 5.375, "tokens": 124}, "seconds": 0.0,
         "curve": [{"round": 0, "loss": 5.5}, {"round": 1, "loss": 5.375}, {"round": 2, "loss": None}]},
    ],
}


def test_the_page_is_self_contained():
    # Execute
    html = render_run_report(RECORDS, {"privacy": {"target_epsilon": 0.0}}, SUMMARY)
    # Assert
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html
    assert "<script" not in html and "<link" not in html and " src=" not in html
    assert set(re.findall(r"https?://[^\s\"']+", html)) == {"http://www.w3.org/2000/svg"}  # the SVG namespace, never fetched


def test_the_page_plots_every_number_of_every_line_once():
    # Execute
    html = render_run_report(RECORDS, {}, SUMMARY)
    # Assert
    expected = {(("version",), 1.0, 1.0), (("version",), 2.0, 1.0), (("version",), 3.0, 2.0),
                (("cohort",), 1.0, 2.0), (("cohort",), 2.0, 2.0), (("cohort",), 3.0, 2.0),
                (("accepted",), 1.0, 2.0), (("accepted",), 2.0, 0.0), (("accepted",), 3.0, 2.0),
                (("train_loss",), 1.0, 5.5), (("train_loss",), 3.0, 5.0),
                (("eval", "loss"), 1.0, 5.25), (("eval", "loss"), 2.0, 5.25), (("eval", "loss"), 3.0, 4.75),
                (("eval", "accuracy"), 1.0, 0.125), (("eval", "accuracy"), 2.0, 0.125), (("eval", "accuracy"), 3.0, 0.25)}
    plotted = points(html)
    assert len(plotted) == len(expected) and set(plotted) == expected


def test_versions_table_has_the_base_then_the_last_line_of_each_version_and_marks_the_final_one():
    # Execute
    html = render_run_report(RECORDS, {}, SUMMARY)
    # Assert
    assert table_rows(html, "versions") == [
        ["0", "0", "5.5", "0", "–", "base model"],  # eval.loss, eval.accuracy, train_loss (the base trained nothing)
        ["1", "2", "5.25", "0.125", "–", ""],  # round 2 committed nothing: version 1's last line
        ["2", "3", "4.75", "0.25", "5", "adapter/ (final)"],
    ]
    assert re.findall(r'<tr class="current"><td class="num">(\d+)</td>', html) == ["2"]


def test_alerts_anywhere_in_a_line_are_listed_and_marked_on_every_chart():
    # Execute
    html = render_run_report(RECORDS, {}, SUMMARY)
    # Assert
    assert table_rows(html, "alerts") == [["2", "alerts", "participation_drop"],
                                          ["3", "monitor.alerts", "drift metric=train_loss zscore=4.5"]]
    charts = elements(html, "figure", "chart")
    marks = elements(html, "line", "alert-mark")
    assert len(marks) == 2 * len(charts) and {m["data-x"] for m in marks} == {"2", "3"}


def test_without_a_summary_the_last_version_is_current_and_no_run_facts_are_shown():
    # Execute
    sections = dict(run_sections(RECORDS[:1], {}, None, current_note="in production"))
    # Assert
    assert "Run" not in sections and "Config" not in sections
    assert table_rows(sections["Model versions"], "versions") == [["1", "1", "5.25", "0.125", "5.5", "in production"]]
    assert "No alerts" in sections["Alerts"]


def test_experiment_report_tables_every_method_and_bars_each_differing_number():
    # Execute
    html = render_experiment_report(RESULTS)
    # Assert
    assert table_rows(html, "methods") == [
        ["base", "base model", "5.5", "124", "0", "–"],
        ["fedavg", "FedAvg", "5.25", "124", "0", "3.5"],
        ["fedadam", "FedAdam", "5.375", "124", "0", "–"],
    ]
    bars = elements(html, "rect", "bar")
    assert [(b["data-label"], b["data-value"]) for b in bars] == [("base", "5.5"), ("fedavg", "5.25"), ("fedadam", "5.375")]
    assert "In the table only (one value for every method that has it): held_out.tokens, seconds, epsilon." in html


def test_experiment_curves_are_one_line_per_method_with_the_method_colour_of_the_bars():
    # Execute
    html = render_experiment_report(RESULTS)
    # Assert
    curve = [p for p in points(html) if p[0][2] == "curve"]
    assert curve == [(("methods", "1", "curve", "loss"), 0.0, 5.5), (("methods", "1", "curve", "loss"), 1.0, 5.25),
                     (("methods", "2", "curve", "loss"), 0.0, 5.5), (("methods", "2", "curve", "loss"), 1.0, 5.375)]
    bar_fill = {b["data-label"]: b["fill"] for b in elements(html, "rect", "bar")}
    point_fill = {c["data-series"]: c["fill"] for c in elements(html, "circle", "point")}
    assert point_fill == {"fedavg": bar_fill["fedavg"], "fedadam": bar_fill["fedadam"]}
    assert table_rows(html, "facts") == [["model", "tiny"], ["seed", "0"], ["budget.tokens", "256"]]
