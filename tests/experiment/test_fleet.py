"""`fedlm experiment fleet --quick`: every policy folds the same updates; time to target read off each curve."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedlm.cli.main import app
from fedlm.config import ConfigError, RunConfig
from fedlm.experiment.fleet import policy_configs, seconds_to
from fedlm.experiment.fleet_settings import FleetSettings, make_fleet_settings


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fleet")
    result = CliRunner().invoke(app, ["experiment", "fleet", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "results.json").read_text())


def test_every_policy_folds_the_same_updates_and_the_outputs_are_written(quick_run):
    out, results = quick_run
    rows = {row["policy"]: row for row in results["policies"]}
    updates = results["settings"]["rounds"] * results["settings"]["clients_per_round"]
    assert set(rows) == {"sync", "quorum", "fedbuff"}
    assert {row["updates_folded"] for row in rows.values()} == {updates}
    assert rows["sync"]["late_or_refused"] == 0 and rows["sync"]["steps"] == results["settings"]["rounds"]
    assert rows["quorum"]["steps"] == updates // results["resolved"]["quorum"]
    assert rows["fedbuff"]["steps"] == updates // results["resolved"]["buffer_size"]
    assert (out / "results.md").read_text().count("\n| ") == 4  # the header row and three policies
    assert (out / "perplexity_vs_simulated_time.png").stat().st_size > 10_000


def test_the_target_is_reached_by_every_policy_and_its_time_is_the_first_point_at_or_below_it(quick_run):
    _, results = quick_run
    target = results["target_perplexity"]
    assert target == max(row["final_perplexity"] for row in results["policies"])
    for row in results["policies"]:
        first = next(p for p in row["curve"] if p["perplexity"] <= target)
        assert row["sim_seconds_to_target"] == first["sim_seconds"] <= row["sim_seconds"]
        seconds = [p["sim_seconds"] for p in row["curve"]]
        assert seconds == sorted(seconds) and seconds[0] > 0


def test_seconds_to_a_target_by_hand():
    curve = [{"sim_seconds": 5.0, "perplexity": 30.0}, {"sim_seconds": 9.0, "perplexity": 20.0},
             {"sim_seconds": 12.0, "perplexity": 21.0}]
    assert seconds_to(curve, 20.5) == 9.0
    assert seconds_to(curve, 30.0) == 5.0
    assert seconds_to(curve, 10.0) is None


def test_a_budget_a_policy_cannot_split_and_unknown_keys_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"fleet\.quorum: 5 must divide the budget of 24 updates"):
        policy_configs(RunConfig(), FleetSettings(rounds=3, clients_per_round=8, quorum=5))
    with pytest.raises(ConfigError, match=r"fleet\.slow_shares: unknown setting"):
        make_fleet_settings({"slow_shares": 0.1})
    with pytest.raises(ConfigError, match=r"fleet\.policies: must name some of"):
        FleetSettings(policies=("async",))
    result = CliRunner().invoke(app, ["experiment", "fleet", "--quick", "--set", "fleet.clients_per_round=99"])
    assert result.exit_code == 2 and "fleet.clients_per_round" in result.output
