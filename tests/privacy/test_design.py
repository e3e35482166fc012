"""Tests of the DP design planner: the Gaussian-DP closed form, a worked SNR by hand, monotonicity, errors."""

from __future__ import annotations

import math

import pytest
from scipy import optimize, stats

from fedlm.privacy.accountant import epsilon
from fedlm.privacy.calibrate import calibrate_noise
from fedlm.privacy.design import gaussian_dp_delta, gaussian_dp_mu, make_design

# SmolLM2-135M, LoRA r = 8 on q_proj / v_proj, FFA-LoRA (B only): 30 layers x 8 x (576 + 192) coordinates
FFA_PARAMS = 184_320
SPEAKERS = 720


def _closed_form_epsilon(mu: float, delta: float) -> float:
    """epsilon of mu-GDP at delta, solved here from Dong, Roth & Su 2019 (Cor. 2.13) with plain exp and cdf:
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    def gap(eps: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta
    return optimize.brentq(gap, 0.0, 200.0, xtol=1e-14, rtol=1e-15)


def _mode(design, name: str):
    (found,) = [mode for mode in design.modes if mode.mode == name]
    return found


# --- full participation: the PLD accountant against closed-form Gaussian DP ---------------


@pytest.mark.parametrize(("z", "rounds", "delta"), [(0.5, 1, 1e-5), (1.0, 1, 1e-5), (2.0, 5, 1e-5),
                                                    (1.5479, 10, SPEAKERS**-1.1), (5.0, 100, 1e-6)])
def test_full_participation_pld_epsilon_is_the_gaussian_dp_closed_form(z: float, rounds: int, delta: float):
    # Prepare: T rounds of multiplier z, every client every round, compose exactly to mu = sqrt(T) / z
    expected = _closed_form_epsilon(math.sqrt(rounds) / z, delta)
    # Execute: the accountant fedlm runs use (`fedlm privacy epsilon --sample-rate 1.0 --accountant pld`)
    eps = epsilon(noise_multiplier=z, sample_rate=1.0, rounds=rounds, delta=delta, accountant="pld")
    # Assert: measured agreement 3e-8 or better; PLD's discretization is pessimistic, never optimistic
    assert eps == pytest.approx(expected, rel=1e-6)
    assert eps >= expected * (1 - 1e-12)


@pytest.mark.parametrize(("eps", "delta"), [(0.5, 1e-5), (8.0, SPEAKERS**-1.1), (30.0, 1e-9)])
def test_gaussian_dp_mu_inverts_the_closed_form(eps: float, delta: float):
    # Execute
    mu = gaussian_dp_mu(eps, delta)
    # Assert: delta(eps) at that mu is the target, and the plain-exp closed form gives back eps
    assert gaussian_dp_delta(mu, eps) == pytest.approx(delta, rel=1e-9)
    assert _closed_form_epsilon(mu, delta) == pytest.approx(eps, rel=1e-9)


def test_gaussian_dp_delta_stays_finite_where_e_to_the_eps_overflows():
    # e^800 overflows a float; in logs the second term is 0 and delta is Phi(-800/2 + 1) = 0
    assert gaussian_dp_delta(2.0, 800.0) == 0.0


# --- a worked example by hand ---------------------------------------------------------------


def test_worked_example_720_speakers_one_round_ffa_lora_eps_8():
    # Prepare, by hand: delta = 720^-1.1 = 7.1934e-4; mu solves the closed form at eps = 8: 2.04299;
    # one round, so z = 1 / mu = 0.489478; std on the mean z C / N = 6.7983e-4 (C = 1);
    # noise norm std sqrt(P) = 6.7983e-4 x 429.325 = 0.291868; SNR = rho C / norm = 3.42620.
    delta = SPEAKERS**-1.1
    mu = optimize.brentq(lambda m: _closed_form_epsilon(m, delta) - 8.0, 0.5, 5.0, xtol=1e-14)
    # Execute
    design = make_design(clients=SPEAKERS, rounds=1, params=FFA_PARAMS, target_epsilon=8.0)
    full = _mode(design, "full")
    # Assert: the hand figures (to their printed digits), then the mu N rho / sqrt(P)
    assert design.delta == pytest.approx(7.1934e-4, rel=1e-4)
    assert design.mu == pytest.approx(mu, rel=1e-9) == pytest.approx(2.04299, rel=1e-5)
    assert full.noise_multiplier == pytest.approx(0.489478, rel=1e-5)
    assert full.std_on_mean == pytest.approx(6.7983e-4, rel=1e-4)
    assert full.noise_norm_on_mean == pytest.approx(0.291868, rel=1e-5)
    assert full.snr == pytest.approx(3.42620, rel=1e-5)
    # At T = 1 the approximation is exact (z = 1 / mu); tolerance 1e-9 covers float rounding only.
    assert full.snr == pytest.approx(mu * SPEAKERS * 1.0 / math.sqrt(FFA_PARAMS), rel=1e-9)
    assert full.epsilon == pytest.approx(8.0, rel=1e-6)  # the PLD accountant's check


def test_over_ten_rounds_the_run_snr_is_mu_n_rho_over_sqrt_p_and_each_round_a_root_ten_share():
    # Prepare: rho = 0.5, LoRA A and B (P = 460,800)
    rho, params = 0.5, 460_800
    # Execute
    design = make_design(clients=SPEAKERS, rounds=10, params=params, target_epsilon=8.0, update_norm_share=rho)
    full = _mode(design, "full")
    # Assert
    bound = design.mu * SPEAKERS * rho / math.sqrt(params)
    assert full.run_snr == pytest.approx(bound, rel=1e-9)
    assert full.snr == pytest.approx(bound / math.sqrt(10), rel=1e-9)
    assert full.noise_multiplier == pytest.approx(math.sqrt(10) / design.mu, rel=1e-12)


def test_full_participation_z_matches_fedlm_calibration_through_the_pld_accountant():
    # Prepare
    delta = SPEAKERS**-1.1
    # Execute: the existing calibration (least z within the target, tolerance 1e-3)
    calibrated = calibrate_noise(target_epsilon=8.0, sample_rate=1.0, rounds=10, delta=delta, accountant="pld")
    design = make_design(clients=SPEAKERS, rounds=10, params=FFA_PARAMS, target_epsilon=8.0)
    # Assert: the closed-form z lies within calibration's tolerance of the calibrated one
    assert abs(_mode(design, "full").noise_multiplier - calibrated) <= 1e-3


def test_poisson_mode_uses_fedlm_calibration_and_the_expected_cohort():
    # Prepare
    clients, cohort, rounds = 500, 50, 20
    # Execute
    design = make_design(clients=clients, rounds=rounds, params=10_000, target_epsilon=4.0, cohort=cohort,
                         clip_norm=0.5, accountant="rdp")
    poisson = _mode(design, "poisson")
    # Assert
    z = calibrate_noise(target_epsilon=4.0, sample_rate=0.1, rounds=rounds, delta=design.delta, accountant="rdp")
    assert poisson.noise_multiplier == z and poisson.sample_rate == 0.1 and poisson.cohort == 50
    assert poisson.epsilon <= 4.0
    assert poisson.std_on_mean == pytest.approx(z * 0.5 / 50, rel=1e-12)
    assert poisson.snr == pytest.approx(50 / (z * 100), rel=1e-12)  # rho K / (z sqrt(P)), free of C


def test_one_band_mf_is_full_participation():
    # Execute
    design = make_design(clients=SPEAKERS, rounds=8, params=FFA_PARAMS, target_epsilon=8.0, bands=1)
    mf, full = _mode(design, "banded_mf"), _mode(design, "full")
    # Assert: C = I, sensitivity sqrt(T): DP-SGD's noise, to float rounding
    assert mf.noise_multiplier == pytest.approx(full.noise_multiplier, rel=1e-12)
    assert mf.snr == pytest.approx(full.snr, rel=1e-12)
    assert mf.error_ratio == pytest.approx(1.0, rel=1e-12)


def test_mf_beats_independent_noise_at_its_participation_and_the_plan_says_which_mode_wins():
    # Prepare: cohorts of 72 of 720: Poisson at q = 0.1 vs 10 cyclic groups with a 10-banded C
    kwargs = dict(clients=SPEAKERS, rounds=100, params=FFA_PARAMS, target_epsilon=8.0, cohort=72, accountant="rdp")
    # Execute
    design = make_design(**kwargs)
    poisson, full, mf = (_mode(design, name) for name in ("poisson", "full", "banded_mf"))
    # Assert
    assert mf.bands == 10 and mf.cohort == 72
    assert mf.error_ratio < 0.25  # correlated noise cancels in the prefix sums
    assert poisson.snr < mf.snr < full.snr
    assert design.recommended.mode == "full"


# --- monotonicity ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def designs_by_clients():
    """N = 100, 400, 1600 at the same sample rate (the Poisson cohort grows with N); computed once."""
    return [make_design(clients=n, rounds=5, params=50_000, target_epsilon=4.0, sample_rate=0.2, accountant="rdp")
            for n in (100, 400, 1600)]


@pytest.fixture(scope="module")
def designs_by_epsilon():
    """eps = 1, 2, 4 with cohorts of 50 of 200; computed once."""
    return [make_design(clients=200, rounds=6, params=1_000, target_epsilon=eps, cohort=50, accountant="rdp")
            for eps in (1.0, 2.0, 4.0)]


@pytest.mark.parametrize("mode", ["poisson", "full", "banded_mf"])
def test_more_clients_raise_the_snr(designs_by_clients, mode: str):
    # Execute
    snrs = [_mode(design, mode).snr for design in designs_by_clients]
    # Assert
    assert snrs[0] < snrs[1] < snrs[2]


def test_more_params_lower_the_snr_by_their_square_root():
    # Execute
    snrs = [_mode(make_design(clients=720, rounds=3, params=p, target_epsilon=2.0), "full").snr
            for p in (46_080, 184_320, 737_280)]
    # Assert
    assert snrs[0] > snrs[1] > snrs[2]
    assert snrs[0] / snrs[1] == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("mode", ["poisson", "full", "banded_mf"])
def test_a_larger_epsilon_needs_less_noise(designs_by_epsilon, mode: str):
    # Execute
    zs = [_mode(design, mode).noise_multiplier for design in designs_by_epsilon]
    # Assert
    assert zs[0] > zs[1] > zs[2]


def test_update_norm_share_scales_the_snr_and_the_clip_norm_only_the_noise():
    # Prepare
    base = dict(clients=300, rounds=2, params=9_000, target_epsilon=2.0)
    # Execute
    full = _mode(make_design(**base), "full")
    half = _mode(make_design(**base, update_norm_share=0.5), "full")
    clip3 = _mode(make_design(**base, clip_norm=3.0), "full")
    # Assert
    assert half.snr == pytest.approx(full.snr / 2, rel=1e-12)
    assert clip3.std_on_mean == pytest.approx(3 * full.std_on_mean, rel=1e-12)
    assert clip3.snr == pytest.approx(full.snr, rel=1e-12)


# --- what is planned, and bad input ---------------------------------------------------------


def test_modes_not_planned_say_why():
    # Execute
    one_round = make_design(clients=100, rounds=1, params=10, target_epsilon=1.0)
    everyone = make_design(clients=100, rounds=5, params=10, target_epsilon=1.0, sample_rate=1.0)
    # Assert
    assert [mode.mode for mode in one_round.modes] == ["full"]
    assert any("--cohort" in note for note in one_round.notes)
    assert any("rounds = 1" in note for note in one_round.notes)
    assert [mode.mode for mode in everyone.modes] == ["full"]  # q = 1 and 1 band are both full participation
    assert len(everyone.notes) == 2


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"clients": 0}, "clients"),
        ({"clients": 2.5}, "clients"),
        ({"rounds": 0}, "rounds"),
        ({"params": 0}, "params"),
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": -1.0}, "target_epsilon"),
        ({"target_epsilon": math.inf}, "target_epsilon"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 0.02}, "delta"),  # not below 1 / N = 0.01
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"cohort": 0}, "cohort"),
        ({"cohort": 101}, "cohort"),
        ({"cohort": 10, "sample_rate": 0.1}, "cohort or sample_rate"),
        ({"update_norm_share": 1.5}, "update_norm_share"),
        ({"update_norm_share": 0.0}, "update_norm_share"),
        ({"bands": 0}, "bands"),
        ({"bands": 6}, "bands"),  # more than the 5 rounds
        ({"accountant": "gdp"}, "accountant"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(kwargs: dict, name: str):
    # Prepare
    args = dict(clients=100, rounds=5, params=1_000, target_epsilon=2.0) | kwargs
    # Execute / Assert
    with pytest.raises(ValueError, match=name):
        make_design(**args)


def test_one_client_needs_a_delta_below_one():
    with pytest.raises(ValueError, match="below 1/N = 1"):
        make_design(clients=1, rounds=1, params=10, target_epsilon=1.0)
    assert make_design(clients=1, rounds=1, params=10, target_epsilon=1.0, delta=0.5).delta == 0.5
