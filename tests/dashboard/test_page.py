"""The dashboard's page without a browser: the report's sections, the live-state line, the script and its
Content-Security-Policy hash, escaping, and the registry panel."""

from __future__ import annotations

import base64
import hashlib
import math
import re

import pytest
from report_markup import elements, points, table_rows

from fedlm.dashboard.page import CONTENT_SECURITY_POLICY, REFRESH_SCRIPT, dashboard_page
from fedlm.dashboard.registry_panel import registry_panel
from fedlm.report.run_report import run_sections

RECORDS = [
    {"round": 1, "version": 1, "accepted": 2, "train_loss": 1.5, "eval": {"loss": 5.25}},
    {"round": 2, "version": 2, "accepted": 2, "train_loss": 0.75, "eval": {"loss": 4.5}},
]
CONFIG = {"model": {"name": "tiny"}, "federation": {"rounds": 3}}
VERSIONS = [
    {"version": 0, "round": 0, "status": "promoted", "production": False, "metrics": {}},
    {"version": 1, "round": 1, "status": "held", "production": True, "metrics": {"eval_loss": 5.25, "train_loss": 1.5}},
    {"version": 2, "round": 2, "status": "<b>promoted</b>", "production": False, "metrics": {"accepted": 2}},
]


def page(records=RECORDS, **kwargs):
    return dashboard_page(records, CONFIG, kwargs.pop("summary", None), title=kwargs.pop("title", "live"),
                          refresh_seconds=kwargs.pop("refresh_seconds", 2.5), **kwargs)


def test_the_page_holds_the_reports_sections_with_the_controls_first():
    # Execute
    html = page(controls=[("Registry", "<p id='panel'>panel</p>")])
    # Assert
    report_titles = [title for title, _ in run_sections(RECORDS, CONFIG)]
    sections = [s["id"] for s in elements(html, "section")]
    assert sections == ["registry", *("-".join(t.lower().split()) for t in report_titles)]
    assert [a["href"] for a in elements(html, "a")][:2] == ["#registry", "#evaluation"]
    assert "<p id='panel'>panel</p>" in html  # the caller's markup, as given
    assert set(points(html)) >= {(("train_loss",), 1.0, 1.5), (("train_loss",), 2.0, 0.75), (("eval", "loss"), 2.0, 4.5)}


def test_the_state_line_names_the_last_round_for_the_script_to_copy():
    # Execute
    live, empty = page(), page([])
    # Assert
    assert elements(live, "p", "note")[0]["data-round"] == "2"
    assert "round 2 is the last one finished" in live
    assert elements(empty, "p", "note")[0]["data-round"] == "0"
    assert "no round has finished yet" in empty


def test_the_head_holds_the_refresh_script_and_its_period():
    # Execute
    html = page(refresh_seconds=0.5)
    # Assert
    head = html[:html.index("</head>")]
    assert [m["content"] for m in elements(head, "meta") if m.get("name") == "fedlm-refresh-seconds"] == ["0.5"]
    assert head.count("<script>") == 1 and f"<script>{REFRESH_SCRIPT}</script>" in head
    assert html.count("<script") == 1  # nothing in the body runs
    for needed in ('"X-Fedlm-Refresh": "1"', 'cache: "no-store"', "new DOMParser()", "replaceChildren",
                   "document.body.dataset.round", "window.scrollTo", '"X-Fedlm-Operator-Action": "1"'):
        assert needed in REFRESH_SCRIPT


def test_the_policy_allows_exactly_the_pages_script_and_nothing_from_elsewhere():
    # Prepare
    html = page()
    script = re.search(r"<script>(.*?)</script>", html, re.S)[1]
    # Execute
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    # Assert
    assert f"script-src 'sha256-{digest}';" in CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY and "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert " src=" not in html
    assert [link["href"] for link in elements(html, "link")] == ["data:,"]  # no favicon request
    assert set(re.findall(r"https?://[^\s\"']+", html)) <= {"http://www.w3.org/2000/svg"}


def test_text_from_the_run_is_escaped_and_cannot_add_markup_or_end_the_head():
    # Prepare
    hostile = "</head><script>alert(1)</script>"
    records = [{"round": 1, "<img src=x onerror=alert(2)>": 1.0, "alerts": [{"kind": hostile}]}]
    # Execute
    html = dashboard_page(records, {"model": {"name": hostile}}, {"status": hostile}, title=hostile, refresh_seconds=1)
    # Assert
    assert html.count("<script") == 1 and html.count("</head>") == 1 and "<img" not in html
    assert html.index('name="fedlm-refresh-seconds"') < html.index("</head>")
    assert "&lt;/head&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize("seconds", [0, -1, math.nan, math.inf])
def test_a_refresh_period_that_is_not_a_positive_number_is_refused(seconds):
    with pytest.raises(ValueError, match="refresh_seconds must be a finite number > 0"):
        page(refresh_seconds=seconds)


def test_the_registry_panel_has_a_button_for_every_version_but_production():
    # Execute
    html = registry_panel(VERSIONS, action="dashboard/production")
    # Assert
    assert [d["data-action"] for d in elements(html, "div", "registry")] == ["dashboard/production"]
    assert [b["data-production-version"] for b in elements(html, "button")] == ["0", "2"]
    assert [(r["data-version"], r.get("class")) for r in elements(html, "tr") if "data-version" in r] == [
        ("0", None), ("1", "current"), ("2", None)]
    assert table_rows(html, "registry") == [
        ["0", "0", "promoted", "–", "–", "–", "make production"],
        ["1", "1", "held", "5.25", "1.5", "–", "production"],
        ["2", "2", "<b>promoted</b>", "–", "–", "2", "make production"],  # the text, escaped: no markup
    ]
    assert "<b>" not in html
    assert [h for h in re.findall(r"<th>([^<]*)</th>", html)] == ["version", "round", "status", "eval loss", "train loss",
                                                                 "accepted", ""]  # no ε: no version has one
