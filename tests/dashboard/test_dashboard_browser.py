"""The live dashboard in headless Chromium: it follows a run as rounds finish, without a reload, and its
"make production" button moves production in the coordinator's store.

The service test serves the real app over plain HTTP on loopback (uvicorn in a thread), each
request carrying the operator's certificate in the ASGI TLS extension exactly as service.tls
puts it there: the mutual-TLS layer itself (handshakes, the certificate reaching the scope) is
covered by tests/service (live_server.py), and a test browser cannot present a client certificate
without a certificate store of its own. Skips (saying why) where selenium, chromium or
chromedriver is missing: see tests/browser.py.
"""

from __future__ import annotations

import json

import pytest
from report_markup import numbers
from tiny_service import OPERATOR, build_tiny_service, served_as

from fedlm.dashboard.local import serve_run_dir
from fedlm.service import store as db
from fedlm.service.dashboard_routes import version_record
from fedlm.service.registry import list_versions

WAIT_SECONDS = 15
READ_PAGE = """
return {round: document.body.dataset.round, refreshes: Number(document.body.dataset.refreshes || 0),
        marker: window.fedlmMarker || null, status: document.getElementById('dashboard-status').textContent,
        message: (document.getElementById('registry-message') || {}).textContent || '',
        points: [...document.querySelectorAll('circle.point')].map(c => [JSON.parse(c.dataset.path).join('.'),
                                                                          Number(c.dataset.x), Number(c.dataset.y)]),
        production: [...document.querySelectorAll('table.registry tr.current')].map(r => r.dataset.version)};
"""


def wait_for(browser, condition, what):
    """The page's state once `condition(state)` holds, polled for up to WAIT_SECONDS."""
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, WAIT_SECONDS, poll_frequency=0.1).until(
            lambda driver: (state := driver.execute_script(READ_PAGE)) and condition(state) and state)
    except Exception:
        pytest.fail(f"{what} within {WAIT_SECONDS} s; the page shows {browser.execute_script(READ_PAGE)}")


def series(state, path):
    return sorted((x, y) for name, x, y in state["points"] if name == path)


def every_number(service) -> set[tuple[str, float, float]]:
    """(path, round, value) of every number the charts must show: each charted version's record, read from the store."""
    records = [version_record(v) for v in list_versions(service.coordinator.store) if v["round"] > 0]
    return {(".".join(path), float(r["round"]), float(value)) for r in records for path, value in numbers(r)
            if path != ("round",)}


def test_the_service_dashboard_follows_the_rounds_and_makes_a_version_production(browser, tmp_path):
    # Prepare: round 1 done, the dashboard open in the browser
    service = build_tiny_service(tmp_path)
    service.run_round(1, {"alice": 2.0, "bob": 1.0})
    with served_as(service, OPERATOR) as base:
        browser.get(f"{base}/dashboard?refresh=0.5")
        first = browser.execute_script(READ_PAGE)
        browser.execute_script("window.fedlmMarker = 'the same page';")  # a reload would drop it
        # Execute: round 2 finishes while the page is open
        service.run_round(2, {"alice": 1.0, "bob": 0.5})
        second = wait_for(browser, lambda s: s["round"] == "2", "the page did not show round 2")
        # Execute: the operator makes version 1 production
        browser.find_element("css selector", 'button[data-production-version="1"]').click()
        browser.switch_to.alert.accept()
        third = wait_for(browser, lambda s: s["production"] == ["1"], "the registry did not show version 1 in production")
    # Assert: round 1's numbers, then round 2's on the same page (no reload), then production moved in the store
    assert first["round"] == "1" and series(first, "train_loss") == [(1.0, 1.5)]
    assert second["marker"] == "the same page" and second["refreshes"] >= 1
    assert series(second, "train_loss") == [(1.0, 1.5), (2.0, 0.75)]
    assert set(map(tuple, second["points"])) == every_number(service)  # every plot, with exactly the store's numbers
    assert second["production"] == ["2"] and second["status"].startswith("live: updated")
    assert third["message"] == "production is now version 1" and third["marker"] == "the same page"
    with service.coordinator.store.session() as session:
        assert db.production_version(session) == 1


def test_the_run_directory_dashboard_follows_metrics_jsonl(browser, tmp_path):
    # Prepare: one finished round
    (tmp_path / "config.toml").write_text('[model]\nname = "tiny"\n')
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"round": 1, "version": 1, "train_loss": 5.5, "eval": {"loss": 5.25}}) + "\n")
    url, stop = serve_run_dir(tmp_path, refresh_seconds=0.3)
    try:
        browser.get(url)
        first = browser.execute_script(READ_PAGE)
        browser.execute_script("window.fedlmMarker = 'the same page';")
        # Execute: half of round 2's line, two refreshes later the rest of it
        line = json.dumps({"round": 2, "version": 2, "train_loss": 5.0, "eval": {"loss": 4.75}}) + "\n"
        with metrics.open("a") as f:
            f.write(line[:20])
        refreshed = first["refreshes"] + 2
        partial = wait_for(browser, lambda s: s["refreshes"] >= refreshed, "the page did not refresh")
        with metrics.open("a") as f:
            f.write(line[20:])
        whole = wait_for(browser, lambda s: s["round"] == "2", "the page did not show round 2")
    finally:
        stop()
    # Execute: the run ends, the server with it
    gone = wait_for(browser, lambda s: s["status"].startswith("not updated"), "the page did not say it stopped updating")
    # Assert
    assert first["round"] == partial["round"] == "1" and series(partial, "eval.loss") == [(1.0, 5.25)]
    assert series(whole, "eval.loss") == [(1.0, 5.25), (2.0, 4.75)] and whole["marker"] == "the same page"
    assert series(gone, "eval.loss") == [(1.0, 5.25), (2.0, 4.75)]  # the last page stays
