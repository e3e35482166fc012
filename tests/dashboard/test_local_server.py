"""The run directory's dashboard server (`fedlm simulate --dashboard`): its unguessable path, loopback only,
and a metrics.jsonl that the run is still writing."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest
from report_markup import elements, points

from fedlm.dashboard.local import serve_run_dir
from fedlm.dashboard.page import CONTENT_SECURITY_POLICY

LINE_1 = {"round": 1, "version": 1, "train_loss": 5.5, "eval": {"loss": 5.25}}
LINE_2 = {"round": 2, "version": 2, "train_loss": 5.0, "eval": {"loss": 4.75}}


def get(url):
    """(status, headers, body text) of a GET; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode()


def shown_round(html):
    return elements(html, "p", "note")[0]["data-round"]


@pytest.fixture
def served(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text('[model]\nname = "tiny"\n')
    (run_dir / "metrics.jsonl").write_text(json.dumps(LINE_1) + "\n")
    url, stop = serve_run_dir(run_dir)
    yield run_dir, url
    stop()


def test_the_page_is_served_at_its_token_path_with_the_runs_numbers(served):
    # Prepare
    _, url = served
    # Execute
    status, headers, html = get(url)
    # Assert
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY and headers["Cache-Control"] == "no-store"
    assert shown_round(html) == "1"
    assert {(("train_loss",), 1.0, 5.5), (("eval", "loss"), 1.0, 5.25)} <= set(points(html))
    assert get(url + "?anything=1")[0] == 200


def test_every_other_path_answers_404(served):
    # Prepare
    _, url = served
    parts = urlsplit(url)
    base, token = f"{parts.scheme}://{parts.netloc}", parts.path.strip("/")
    # Execute
    answers = {path: get(base + path)[0] for path in ("/", f"/{token}", f"/{token}/x", f"/{token[:-1]}/", "/favicon.ico")}
    # Assert
    assert set(answers.values()) == {404}, answers
    assert len(token) >= 22  # 128 random bits


def test_each_server_gets_its_own_random_token(tmp_path):
    # Execute
    (first, stop_first), (second, stop_second) = serve_run_dir(tmp_path), serve_run_dir(tmp_path)
    stop_first(), stop_second()
    # Assert
    assert urlsplit(first).path != urlsplit(second).path


def test_a_half_written_last_line_waits_for_its_newline(served):
    # Prepare: the run has started writing round 2's line
    run_dir, url = served
    text = json.dumps(LINE_2) + "\n"
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(text[:25])
    # Execute
    status, _, partial = get(url)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(text[25:])
    _, _, whole = get(url)
    # Assert
    assert status == 200 and shown_round(partial) == "1"
    assert shown_round(whole) == "2" and (("train_loss",), 2.0, 5.0) in points(whole)


def test_a_damaged_finished_line_is_a_500_naming_it(served):
    # Prepare
    run_dir, url = served
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write("{not json}\n")
    # Execute
    status, _, text = get(url)
    # Assert
    assert status == 500 and "metrics.jsonl line 2 is not valid JSON" in text


def test_a_run_directory_that_does_not_exist_yet_shows_a_waiting_page(tmp_path):
    # Prepare
    url, stop = serve_run_dir(tmp_path / "not-yet")
    # Execute
    try:
        status, _, html = get(url)
    finally:
        stop()
    # Assert
    assert status == 200 and shown_round(html) == "0" and "no round has finished yet" in html


def test_after_stop_nothing_listens(tmp_path):
    # Prepare
    url, stop = serve_run_dir(tmp_path)
    # Execute
    stop()
    # Assert
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_only_a_loopback_address_is_accepted(tmp_path, host):
    with pytest.raises(ValueError, match="binds only to a loopback address"):
        serve_run_dir(tmp_path, host=host)
