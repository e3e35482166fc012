"""`fedlm privacy` as a user meets it: numbers that match dp-accounting, JSON, clear errors."""

from __future__ import annotations

import json

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from typer.testing import CliRunner

from fedlm.cli.privacy_cmd import app as privacy_app
from fedlm.privacy.accountant import epsilon

runner = CliRunner()
PLAN = ["--sample-rate", "0.02", "--rounds", "200", "--delta", "1e-5"]


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().count("\n") == 0  # exactly one line: one JSON object
    return json.loads(result.stdout)


def test_main_app_has_the_privacy_group():
    from fedlm.cli.main import app  # the full CLI imports torch: only here

    result = runner.invoke(app, ["privacy", "--help"])
    assert result.exit_code == 0
    assert "epsilon" in result.output and "calibrate" in result.output


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_json_equals_dp_accounting(accountant: str):
    # Prepare: dp-accounting's own computation of 200 Poisson-sampled Gaussian rounds
    direct = RdpAccountant() if accountant == "rdp" else PLDAccountant()
    direct.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(1.1)), 200))
    # Execute
    out = _json(runner.invoke(privacy_app, ["epsilon", "--noise-multiplier", "1.1", *PLAN,
                                    "--accountant", accountant, "--json"]))
    # Assert
    assert set(out) == {"noise_multiplier", "sample_rate", "rounds", "delta", "accountant", "epsilon"}
    assert (out["noise_multiplier"], out["sample_rate"], out["rounds"], out["delta"], out["accountant"]) \
        == (1.1, 0.02, 200, 1e-5, accountant)
    assert out["epsilon"] == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)


def test_epsilon_prints_a_sentence_by_default():
    result = runner.invoke(privacy_app, ["epsilon", "--noise-multiplier", "1.1", *PLAN])
    eps = epsilon(noise_multiplier=1.1, sample_rate=0.02, rounds=200, delta=1e-5)
    assert result.exit_code == 0, result.output
    assert f"epsilon = {eps:.4f}" in result.stdout and "200 rounds" in result.stdout


def test_calibrate_json_meets_the_target():
    # Execute
    out = _json(runner.invoke(privacy_app, ["calibrate", "--target-epsilon", "1.5", *PLAN, "--json"]))
    # Assert
    assert set(out) == {"target_epsilon", "sample_rate", "rounds", "delta", "accountant", "noise_multiplier",
                        "epsilon"}
    z = out["noise_multiplier"]
    assert out["epsilon"] == epsilon(noise_multiplier=z, sample_rate=0.02, rounds=200, delta=1e-5)
    assert out["epsilon"] <= out["target_epsilon"] == 1.5
    assert epsilon(noise_multiplier=z - 1e-3, sample_rate=0.02, rounds=200, delta=1e-5) > 1.5  # the least such z


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["epsilon", "--noise-multiplier", "1", "--sample-rate", "1.5", "--rounds", "10", "--delta", "1e-5"],
         "--sample-rate"),
        (["epsilon", "--noise-multiplier", "-1", "--sample-rate", "0.1", "--rounds", "10", "--delta", "1e-5"],
         "--noise-multiplier"),
        (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--rounds", "0", "--delta", "1e-5"],
         "--rounds"),
        (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--rounds", "10", "--delta", "0"],
         "--delta"),
        (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--rounds", "10", "--delta", "1e-5",
          "--accountant", "gdp"], "--accountant"),
        (["calibrate", "--target-epsilon", "0", "--sample-rate", "0.1", "--rounds", "10", "--delta", "1e-5"],
         "--target-epsilon"),
        (["calibrate", "--target-epsilon", "1e-6", "--sample-rate", "1", "--rounds", "1", "--delta", "1e-5"],
         "--target-epsilon"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_flag(args: list[str], flag: str):
    # Execute
    result = runner.invoke(privacy_app, [*args, "--json"])
    # Assert
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert flag in result.stderr
    assert "Traceback" not in result.output
