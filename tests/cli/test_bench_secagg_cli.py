"""`fedlm bench secagg` as a user runs it: one JSON object, an exact sum, clear errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedlm.cli.main import app

runner = CliRunner()


def test_json_report_says_the_sum_is_exact_and_times_every_stage():
    result = runner.invoke(app, ["bench", "secagg", "--clients", "12", "--params", "5000", "--neighbours", "4",
                                 "--dropout", "0.09", "--json"])  # one drops: every secret keeps 3 of 4 holders
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["exact"] is True and report["recovered"] is True
    assert report["neighbours"] == 4 and report["threshold"] == 3 and report["dropped"] == 1
    stages = ("advertise", "share", "mask", "confirm", "unmask")
    assert set(report["client_seconds"]) == set(stages) == set(report["server_seconds"])
    assert report["server_seconds"]["unmask"] > 0 and report["plain_aggregation_seconds"] > 0


def test_table_report_and_a_clean_failure_past_the_threshold():
    ok = runner.invoke(app, ["bench", "secagg", "-n", "5", "-p", "100"])
    assert ok.exit_code == 0 and "equal" in ok.output and "seconds per stage" in ok.output
    failed = runner.invoke(app, ["bench", "secagg", "-n", "10", "-p", "100", "--dropout", "0.5"])
    assert failed.exit_code == 0 and "round failed cleanly" in failed.output


def test_bad_arguments_are_refused_with_a_message():
    for args, message in ((["-n", "2"], "at least 3 clients"), (["--dropout", "1.5"], "dropout must be")):
        result = runner.invoke(app, ["bench", "secagg", *args])
        assert result.exit_code == 2 and message in result.output
