"""`fedlm bench sim` (the round; --policy fedbuff|both) and `fedlm simulate`'s executor flags, as a user meets them."""

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


POLICY_KEYS = {"policy", "clients", "params", "repetitions", "buffer_size", "max_staleness", "staleness_weight",
               "mean_staleness", "sync_us_per_update", "fedbuff_us_per_update", "ratio", "ratio_low", "ratio_high",
               "sync_server_steps", "fedbuff_server_steps", "sync_updates_folded", "fedbuff_updates_folded",
               "sync_cpu_us_per_update", "fedbuff_cpu_us_per_update", "cpu_ratio", "cpu_ratio_low", "cpu_ratio_high",
               "floor_us_per_update"}


def test_bench_sim_policy_both_json_reports_both_paths_and_their_ratio():
    # Execute: 24 updates, a step every 6, staleness in [0, 2], 2 measured passes per path
    result = runner.invoke(app, ["bench", "sim", "--policy", "both", "-n", "24", "-p", "300", "-r", "2",
                                 "--buffer-size", "6", "--max-staleness", "2", "--json"])
    # Assert
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert POLICY_KEYS <= set(report)
    assert (report["policy"], report["clients"], report["params"], report["repetitions"]) == ("both", 24, 300, 2)
    assert (report["buffer_size"], report["max_staleness"], report["staleness_weight"]) == (6, 2, "sqrt")
    assert report["sync_updates_folded"] == report["fedbuff_updates_folded"] == 24
    assert (report["sync_server_steps"], report["fedbuff_server_steps"]) == (1, 4)
    assert abs(report["ratio"] - report["fedbuff_us_per_update"] / report["sync_us_per_update"]) < 1e-9


def test_bench_sim_policy_fedbuff_defaults_to_one_step_per_pass_and_prints_a_table():
    # Execute: K defaults to N
    table = runner.invoke(app, ["bench", "sim", "--policy", "fedbuff", "-n", "10", "-p", "50", "-r", "1"])
    report = json.loads(runner.invoke(app, ["bench", "sim", "--policy", "fedbuff", "-n", "10", "-p", "50", "-r", "1",
                                            "--staleness-weight", "constant", "--json"]).stdout)
    # Assert
    assert table.exit_code == 0, table.output
    assert "fedbuff K=10" in table.output and "fedbuff / sync" not in table.output
    assert (report["buffer_size"], report["fedbuff_server_steps"], report["staleness_weight"]) == (10, 1, "constant")
    assert report["sync_us_per_update"] is None and report["ratio"] is None


def test_bench_sim_policy_flags_are_refused_where_they_do_not_apply():
    # Execute
    unknown = runner.invoke(app, ["bench", "sim", "--policy", "quorum", "--json"])
    sync_with_k = runner.invoke(app, ["bench", "sim", "--buffer-size", "4", "--json"])
    both_on_pool = runner.invoke(app, ["bench", "sim", "--policy", "both", "--executor", "processes", "--json"])
    bad_weight = runner.invoke(app, ["bench", "sim", "--policy", "both", "--staleness-weight", "cubic", "--json"])
    too_large = runner.invoke(app, ["bench", "sim", "--policy", "both", "-n", "5", "-p", "8", "-k", "6", "--json"])
    # Assert: each exits 2 naming the flag or setting at fault, before measuring anything
    assert all(r.exit_code == 2 for r in (unknown, sync_with_k, both_on_pool, bad_weight, too_large))
    assert "--policy must be one of sync, fedbuff, both" in one_line(unknown.output)
    assert "--buffer-size, --max-staleness and --staleness-weight apply to --policy fedbuff or both" in one_line(
        sync_with_k.output)
    assert "--executor, --workers and --address apply to --policy sync" in one_line(both_on_pool.output)
    assert "policy.staleness_weight" in one_line(bad_weight.output)
    assert "K = 6 is larger than N = 5" in one_line(too_large.output)


def one_line(output: str) -> str:
    """The console wraps long errors; compare them with the wrapping undone."""
    return " ".join(output.split())


def test_simulate_refuses_bad_executor_flags_before_writing_anything(tmp_path):
    # Execute
    unknown = runner.invoke(app, ["simulate", "--model", "tiny", "--executor", "threads", "--out", str(tmp_path / "a")])
    serial_workers = runner.invoke(app, ["simulate", "--model", "tiny", "--workers", "4", "--out", str(tmp_path / "b")])
    # Assert
    assert unknown.exit_code == 2 and "simulation.executor" in unknown.output
    assert serial_workers.exit_code == 2 and "simulation.workers" in serial_workers.output
    assert not any(tmp_path.iterdir())
