"""`fedlm privacy plan` as a user meets it, and `fedlm privacy epsilon` pinned to closed-form Gaussian DP."""

from __future__ import annotations

import json
import math

import pytest
from scipy import optimize, stats
from typer.testing import CliRunner

from fedlm.cli.privacy_cmd import app as privacy_app
from fedlm.privacy.design import make_design

runner = CliRunner()
PLAN = ["plan", "--clients", "720", "--rounds", "10", "--params", "184320", "--epsilon", "8"]
MODE_KEYS = {"mode", "cohort", "sample_rate", "noise_multiplier", "epsilon", "std_on_mean", "noise_norm_on_mean",
             "snr", "run_snr", "bands", "error_ratio"}


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().count("\n") == 0  # exactly one line: one JSON object
    return json.loads(result.stdout)


def _closed_form_epsilon(mu: float, delta: float) -> float:
    """Dong, Roth & Su 2019: delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2), solved for eps."""
    def gap(eps: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta
    return optimize.brentq(gap, 0.0, 100.0, xtol=1e-15, rtol=1e-15)


def test_epsilon_at_full_participation_is_pinned_to_the_gaussian_dp_closed_form():
    # Prepare: 10 rounds of z = 1.5, every client every round: mu = sqrt(10) / 1.5 = 2.1082;
    # the closed form gives epsilon = 10.6695228097 at delta = 1e-5
    expected = _closed_form_epsilon(math.sqrt(10) / 1.5, 1e-5)
    # Execute
    out = _json(runner.invoke(privacy_app, ["epsilon", "--noise-multiplier", "1.5", "--sample-rate", "1.0",
                                            "--rounds", "10", "--delta", "1e-5", "--accountant", "pld", "--json"]))
    # Assert: the golden figure, and the PLD accountant within 1e-6 of it (measured: 2.3e-9)
    assert expected == pytest.approx(10.6695228097, rel=1e-10)
    assert out["epsilon"] == pytest.approx(expected, rel=1e-6)


def test_plan_json_has_every_mode_and_the_recommendation():
    # Execute: cohorts of 64 (RDP for the Poisson mode keeps this fast)
    out = _json(runner.invoke(privacy_app, [*PLAN, "--cohort", "64", "--accountant", "rdp", "--json"]))
    # Assert
    assert set(out) == {"clients", "rounds", "params", "target_epsilon", "delta", "delta_is_default", "clip_norm",
                        "update_norm_share", "accountant", "mu", "modes", "recommended", "notes"}
    assert (out["clients"], out["rounds"], out["params"], out["target_epsilon"]) == (720, 10, 184320, 8.0)
    assert out["delta"] == pytest.approx(720**-1.1, rel=1e-12) and out["delta_is_default"] is True
    assert (out["clip_norm"], out["update_norm_share"], out["notes"]) == (1.0, 1.0, [])
    assert [mode["mode"] for mode in out["modes"]] == ["poisson", "full", "banded_mf"]
    assert all(set(mode) == MODE_KEYS for mode in out["modes"])
    poisson, full, mf = out["modes"]
    assert poisson["cohort"] == pytest.approx(64) and mf["bands"] == 10 and mf["cohort"] == 72
    assert out["recommended"] == "full" == max(out["modes"], key=lambda mode: mode["snr"])["mode"]
    # The same figures as the library's
    direct = make_design(clients=720, rounds=10, params=184320, target_epsilon=8.0, cohort=64, accountant="rdp")
    assert [mode["snr"] for mode in out["modes"]] == [mode.snr for mode in direct.modes]


def test_plan_table_names_modes_delta_rho_and_recommends_one():
    # Execute
    result = runner.invoke(privacy_app, [*PLAN, "--update-norm-share", "0.5", "--delta", "1e-4"])
    # Assert
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # Rich wraps long lines at the terminal's width
    design = make_design(clients=720, rounds=10, params=184320, target_epsilon=8.0, update_norm_share=0.5,
                         delta=1e-4)
    full = design.modes[0]
    assert "N=720 clients, T=10 rounds, P=184,320 coordinates, epsilon=8" in text
    assert f"full 720 {full.noise_multiplier:.4f} {full.epsilon:.4f}" in text
    assert f"{full.snr:.3f} {full.run_snr:.3f}" in text
    assert "delta = 0.0001 (given)" in text and "rho = 0.5" in text
    assert "poisson: not planned; give --cohort or --sample-rate" in text
    assert f"recommended: full participation (highest predicted SNR, {full.snr:.3f} per round)" in text


def test_plan_says_the_default_delta_and_rho():
    # Execute
    result = runner.invoke(privacy_app, ["plan", "--clients", "720", "--rounds", "1", "--params", "184320",
                                         "--epsilon", "8"])
    # Assert
    text = " ".join(result.stdout.split())
    assert result.exit_code == 0, result.output
    assert "delta = 0.0007193 (default 1 / N^1.1)" in text
    assert "rho = 1: a clipped update's norm as a share of C (default 1.0" in text
    assert "3.426 3.426" in text  # the worked example's SNR, per round and over the one round


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--clients", "0"], "--clients"),
        (["--epsilon", "0"], "--epsilon"),
        (["--epsilon", "-2"], "--epsilon"),
        (["--params", "0"], "--params"),
        (["--rounds", "0"], "--rounds"),
        (["--sample-rate", "0"], "--sample-rate"),
        (["--sample-rate", "1.5"], "--sample-rate"),
        (["--cohort", "721"], "--cohort"),
        (["--cohort", "64", "--sample-rate", "0.1"], "--cohort or --sample-rate"),
        (["--delta", "0.01"], "--delta"),
        (["--clip", "0"], "--clip"),
        (["--update-norm-share", "2"], "--update-norm-share"),
        (["--bands", "11"], "--bands"),
        (["--accountant", "gdp"], "--accountant"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_flag(extra: list[str], flag: str):
    # Prepare: later flags override PLAN's
    args = PLAN + extra
    # Execute
    result = runner.invoke(privacy_app, [*args, "--json"])
    # Assert
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert flag in result.stderr
    assert "Traceback" not in result.output
