"""`fedlm experiment personalize`: every method's per-client distribution written, its figures those of the losses."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from fedlm.cli.main import app
from fedlm.config import ConfigError
from fedlm.experiment.personalize_settings import make_personalize_settings

runner = CliRunner()
HELD_OUT = ["fedavg_global", "fedavg_finetune", "fedavg_ditto", "reptile_global", "reptile_finetune"]
SITES = ["site_global", "site_private", "site_finetune"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("personalize") / "out"
    result = runner.invoke(app, ["experiment", "personalize", "--quick", "--out", str(out), "--set", "model.threads=1"])
    return result, out


def test_quick_run_writes_json_table_and_plot_with_finite_figures_for_every_method(quick_run):
    # Execute (fixture)
    result, out = quick_run
    # Assert
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    tables = {t["name"]: t for t in results["tables"]}
    assert [r["name"] for r in tables["held_out"]["rows"]] == HELD_OUT
    assert [r["name"] for r in tables["sites"]["rows"]] == SITES
    assert tables["held_out"]["clients"] == 3 and tables["sites"]["clients"] == 3  # --quick: 3 held out; 3 roles >= 900 lines
    for table in tables.values():
        for row in table["rows"]:
            assert all(math.isfinite(v) for v in row["summary"].values()), row["name"]
            assert len(row["loss_by_client"]) == table["clients"] and row["training_tokens"] > 0
    # Personalizing from the global lowers the mean loss of the clients it was scored on, here by a visible margin.
    rows = {r["name"]: r["summary"] for r in tables["held_out"]["rows"]}
    assert rows["fedavg_finetune"]["mean_loss"] < rows["fedavg_global"]["mean_loss"] - 0.01
    table = (out / "results.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 2 + len(HELD_OUT) + len(SITES)  # 2 headers
    assert (out / "per_client_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_written_distribution_figures_are_numpys_over_the_written_per_client_losses(quick_run):
    # Prepare
    _, out = quick_run
    results = json.loads((out / "results.json").read_text())
    for table in results["tables"]:
        reference = next(r for r in table["rows"] if r["name"] == table["reference"])["loss_by_client"]
        clients = sorted(reference)
        base = np.array([reference[c] for c in clients])
        for row in table["rows"]:
            # Execute: recompute from the losses alone
            loss = np.array([row["loss_by_client"][c] for c in clients])
            d = row["summary"]
            # Assert
            assert d["clients"] == len(clients)
            assert d["mean_loss"] == pytest.approx(loss.mean(), abs=1e-12)
            assert d["median_loss"] == pytest.approx(np.median(loss), abs=1e-12)
            assert d["p90_loss"] == pytest.approx(np.percentile(loss, 90), abs=1e-12)
            assert d["mean_perplexity"] == pytest.approx(np.exp(loss).mean(), rel=1e-12)
            assert d["p90_perplexity"] == pytest.approx(np.percentile(np.exp(loss), 90), rel=1e-12)
            assert d["share_worse"] == np.mean(loss > base)
            assert d["mean_change"] == pytest.approx(np.mean(loss - base), abs=1e-12)
        # The reference against itself: nobody worse, no change.
        assert table["rows"][0]["summary"]["share_worse"] == 0.0 and table["rows"][0]["summary"]["mean_change"] == 0.0


def test_a_reptile_shape_that_cannot_match_fedavgs_tokens_is_refused_before_anything_runs(tmp_path):
    # Execute: 2 clients x 2 steps = 4 client steps a round; Reptile's 3 steps a client cannot make 4.
    result = runner.invoke(app, ["experiment", "personalize", "--quick", "--out", str(tmp_path / "p"),
                                 "--set", "experiment.reptile_steps=3"])
    # Assert
    assert result.exit_code == 2
    assert "experiment.reptile_steps: must divide clients_per_round x local_steps = 4" in " ".join(result.output.split())
    assert not (tmp_path / "p").exists()


def test_an_encoder_kind_is_refused(tmp_path):
    result = runner.invoke(app, ["experiment", "personalize", "--quick", "--out", str(tmp_path / "p"),
                                 "--set", "task.kind=retrieval"])
    assert result.exit_code == 2 and "task.kind" in result.output and "encoder kind" in result.output
    assert not (tmp_path / "p").exists()


def test_private_layers_that_leave_no_shared_layer_are_refused_before_training(tmp_path):
    # Execute: the tiny model's decoder layers are all made private
    result = runner.invoke(app, ["experiment", "personalize", "--quick", "--out", str(tmp_path / "p"),
                                 "--set", "experiment.private_layers=99"])
    # Assert
    assert result.exit_code == 2
    assert "experiment.private_layers = 99 leaves no shared layer" in " ".join(result.output.split())
    assert "FedAvg round 1" not in result.output and not (tmp_path / "p").exists()


@pytest.mark.parametrize("values, message", [
    ({"rounds": 0}, "experiment.rounds: must be >= 1"),
    ({"personal_lr": 0.0}, "experiment.personal_lr: must be > 0"),
    ({"ditto_lambda": -1.0}, "experiment.ditto_lambda: must be >= 0"),
    ({"steps": "four"}, "experiment.steps: must be an integer"),
    ({"step": 4}, "experiment.step: unknown setting"),
])
def test_bad_settings_are_refused_with_their_key(values, message):
    with pytest.raises(ConfigError, match=message):
        make_personalize_settings(values)
