"""`fedlm simulate --dashboard`: the dashboard answers before the first round, follows each round while the
run goes on, and stops with the command, Ctrl-C included."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from report_markup import elements
from typer.testing import CliRunner

import fedlm.dashboard.local as local
import fedlm.sim.run as sim_run
from fedlm.cli.main import app

runner = CliRunner()
TINY = ["simulate", "--model", "tiny", "--rounds", "2", "--seq-len", "32", "--local-steps", "1", "--batch-size", "2",
        "--clients-per-round", "2", "--set", "eval.clients=2", "--set", "eval.max_sequences=4", "-q"]


def shown_round(url):
    with urllib.request.urlopen(url, timeout=5) as answer:
        return elements(answer.read().decode(), "p", "note")[0]["data-round"]


def is_listening(url):
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return True
    except urllib.error.URLError:
        return False
    return True


@pytest.fixture
def started(monkeypatch):
    """The URLs of the dashboards the command starts, and the round the page shows at that moment."""
    seen = []

    def serve_and_look(run_dir, host="127.0.0.1", port=0, **kwargs):
        url, stop = serve_run_dir(run_dir, host, port, **kwargs)
        seen.append((url, shown_round(url)))
        return url, stop

    serve_run_dir = local.serve_run_dir
    monkeypatch.setattr(local, "serve_run_dir", serve_and_look)
    return seen


def test_the_dashboard_follows_every_round_and_stops_with_the_run(started, monkeypatch, tmp_path):
    # Prepare: look at the page each time the run appends a metrics line
    rounds_shown = []
    append_metrics = sim_run.append_metrics

    def append_and_look(path, record):
        append_metrics(path, record)
        rounds_shown.append(shown_round(started[0][0]))

    monkeypatch.setattr(sim_run, "append_metrics", append_and_look)
    # Execute
    result = runner.invoke(app, [*TINY, "--out", str(tmp_path / "run"), "--dashboard"])
    # Assert
    assert result.exit_code == 0, result.output
    (url, before_first_round), = started
    assert before_first_round == "0" and rounds_shown == ["1", "2"]
    assert f"live dashboard (this machine only, until the run ends): {url}" in result.output
    assert "dashboard stopped" in result.output and not is_listening(url)


def test_ctrl_c_stops_the_dashboard(started, monkeypatch, tmp_path):
    # Prepare
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sim_run, "run_simulation", interrupted)
    # Execute
    result = runner.invoke(app, [*TINY, "--out", str(tmp_path / "run"), "--dashboard"])
    # Assert
    assert result.exit_code != 0
    (url, _), = started
    assert not is_listening(url)


def test_dashboard_port_needs_dashboard(started, tmp_path):
    # Execute
    result = runner.invoke(app, [*TINY, "--out", str(tmp_path / "run"), "--dashboard-port", "8765"])
    # Assert
    assert result.exit_code == 2 and "--dashboard-port needs --dashboard" in result.output
    assert started == [] and not (tmp_path / "run").exists()


def test_a_taken_port_is_refused_before_the_run_starts(started, tmp_path):
    # Prepare
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Execute
        result = runner.invoke(app, [*TINY, "--out", str(tmp_path / "run"), "--dashboard", "--dashboard-port", str(port)])
    # Assert
    assert result.exit_code == 2 and f"could not listen on port {port}" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()
