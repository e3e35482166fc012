"""`fedlm bench sim` and the executor flags of `fedlm simulate`, as a user meets them."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedlm.cli.main import app

runner = CliRunner()
KEYS = {"clients", "params", "rounds", "executor", "workers", "seconds_per_round_median", "seconds_per_round_min",
        "first_round_seconds", "peak_rss_bytes"}


def test_bench_sim_json_is_one_object_with_the_documented_keys():
    # Execute
    result = runner.invoke(app, ["bench", "sim", "--clients", "20", "--params", "1000", "--rounds", "2", "--json"])
    # Assert
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert KEYS <= set(report)
    assert (report["clients"], report["params"], report["rounds"], report["executor"]) == (20, 1000, 2, "serial")
    assert 0 < report["seconds_per_round_min"] <= report["seconds_per_round_median"] < 10
    assert report["peak_rss_bytes"] > 2**20
    assert abs(report["global_shift"] - 3.0) < 1e-4  # +1 from each of 3 rounds (warm-up included)


def test_bench_sim_prints_a_table_without_json():
    result = runner.invoke(app, ["bench", "sim", "--clients", "5", "--params", "100", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    assert "s/round" in result.output and "serial" in result.output


def test_bench_sim_refuses_an_unknown_executor():
    result = runner.invoke(app, ["bench", "sim", "--executor", "threads", "--json"])
    assert result.exit_code == 2
    assert "simulation.executor" in result.output


def test_simulate_refuses_bad_executor_flags_before_writing_anything(tmp_path):
    # Execute
    unknown = runner.invoke(app, ["simulate", "--model", "tiny", "--executor", "threads", "--out", str(tmp_path / "a")])
    serial_workers = runner.invoke(app, ["simulate", "--model", "tiny", "--workers", "4", "--out", str(tmp_path / "b")])
    # Assert
    assert unknown.exit_code == 2 and "simulation.executor" in unknown.output
    assert serial_workers.exit_code == 2 and "simulation.workers" in serial_workers.output
    assert not any(tmp_path.iterdir())
