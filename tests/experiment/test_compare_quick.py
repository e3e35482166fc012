"""`fedlm experiment compare --quick` end to end: every method, one budget, the JSON, the table and the plot."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from fedlm.cli.main import app

runner = CliRunner()
METHODS = ["base", "centralized", "local_only", "fedavg", "fedadam", "fedavg_dp", "fedavg_8bit"]


def test_quick_comparison_writes_json_table_and_plot_with_every_method(tmp_path):
    # Execute
    result = runner.invoke(app, ["experiment", "compare", "--quick", "--out", str(tmp_path / "cmp")])
    # Assert
    assert result.exit_code == 0, result.output
    out = tmp_path / "cmp"
    results = json.loads((out / "results.json").read_text())
    methods = {m["name"]: m for m in results["methods"]}
    assert list(methods) == METHODS
    # Equal compute: the quick budget is 2 rounds x 2 clients x 1 step x batch 2 = 8 sequences of 32 tokens.
    assert results["budget"]["sequences"] == 8 and results["budget"]["tokens"] == 256
    assert [m["training_tokens"] for m in results["methods"]] == [0] + [256] * 6
    # The gain fraction is (base - method) / (base - centralized) in held-out loss.
    base, central = methods["base"]["held_out"]["loss"], methods["centralized"]["held_out"]["loss"]
    assert central < base
    for m in results["methods"]:
        expected = (base - m["held_out"]["loss"]) / (base - central)
        assert math.isclose(m["fraction_of_centralized_gain"], expected, rel_tol=1e-12)
    # Federated rows carry held-out perplexity after every round, starting from the base model.
    assert [p["round"] for p in methods["fedavg"]["curve"]] == [0, 1, 2]
    assert methods["fedavg"]["curve"][-1]["perplexity"] == methods["fedavg"]["held_out"]["perplexity"]
    assert methods["fedavg_dp"]["epsilon"] <= 8.0 and methods["fedavg_dp"]["noise_multiplier"] > 0
    assert methods["fedavg_8bit"]["bytes_up_per_client"] < methods["fedavg"]["bytes_up_per_client"] / 3
    assert "local_only" not in {m for m, v in methods.items() if "curve" in v}
    table = (out / "results.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + len(METHODS)
    assert "FedAvg + user-level DP (ε = " in table
    assert (out / "held_out_perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_budget_that_local_only_cannot_share_is_refused_before_anything_trains(tmp_path):
    # Execute: 8 sequences cannot be split equally among 3 clients.
    result = runner.invoke(app, ["experiment", "compare", "--quick", "--out", str(tmp_path / "cmp"),
                                 "--set", "experiment.train_clients=3"])
    # Assert
    assert result.exit_code == 2
    assert "experiment.train_clients" in result.output
    assert not (tmp_path / "cmp").exists()
