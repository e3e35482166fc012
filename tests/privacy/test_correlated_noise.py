"""Banded MF-DP-FTRL in the round engine: the streamed noise, the ledger paid once, the rounds it releases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedlm.config import RunConfig, apply_overrides
from fedlm.core.types import Update
from fedlm.privacy import banded
from fedlm.privacy.correlated_noise import keep_history, next_noise
from fedlm.privacy.design import gaussian_dp_delta
from fedlm.privacy.ledger import PrivacyLedger
from fedlm.privacy.plan import make_privacy_plan
from fedlm.server.rounds import accept_update, close_round, initial_state, open_round
from fedlm.updates.build import build_pipeline

TINY = np.array([1.0, 0.5])


def test_streamed_noise_equals_c_inverse_times_z():
    # Prepare: T = 7 rounds of P = 5 normals, a 3-banded factor
    coefficients, normals = np.array([1.0, 0.4, -0.2]), np.random.default_rng(3).standard_normal((7, 5))
    history, rows = (), []
    # Execute: one round at a time, keeping only b - 1 = 2 vectors
    for z in normals:
        w = next_noise(coefficients, history, z)
        history = keep_history(coefficients, history, w)
        rows.append(w)
        assert len(history) <= 2
    # Assert: the stream is C^-1 Z (float32 state: about 1e-7 relative)
    np.testing.assert_allclose(np.array(rows), banded.correlated_noise(coefficients, normals), rtol=1e-6, atol=1e-6)


def test_tiny_case_noise_by_hand():
    # C = [[1,0],[.5,1]] per coordinate: w_1 = z_1, w_2 = z_2 - 0.5 w_1, w_3 = z_3 - 0.5 w_2
    w1 = next_noise(TINY, (), np.array([2.0]))
    w2 = next_noise(TINY, (w1.astype(np.float32),), np.array([1.0]))
    w3 = next_noise(TINY, (w2.astype(np.float32),), np.array([0.0]))
    assert (w1[0], w2[0], w3[0]) == (2.0, 0.0, 0.0)


def test_a_history_longer_than_the_bands_is_refused():
    with pytest.raises(ValueError, match="keeps 1 past noise vectors"):
        next_noise(TINY, (np.zeros(1), np.zeros(1)), np.zeros(1))


def mf_config(rounds=4, groups=2, bands=0, sigma=2.0) -> RunConfig:
    return apply_overrides(RunConfig(), {
        "strategy": {"clip_norm": 1.0, "weighting": "uniform"},
        "federation": {"rounds": rounds, "sampling": "cyclic", "groups": groups},
        "privacy": {"noise_multiplier": sigma, "mechanism": "banded_mf", "bands": bands, "accountant": "pld"},
    })


def test_the_plan_holds_the_factor_its_sensitivity_and_per_round_gains():
    # Prepare: T = 4, 2 groups, the optimal 2-banded factor
    config = mf_config()
    # Execute
    plan = make_privacy_plan(config.privacy, config.federation, 10)
    # Assert
    c = np.array(plan.coefficients)
    assert c.size == 2 and c[0] == 1.0
    assert plan.sensitivity == pytest.approx(banded.cyclic_sensitivity(c, 4, 2), rel=1e-12)
    inverse = banded.inverse_coefficients(c, 4)
    assert plan.round_noise_gain(1) == pytest.approx(1.0)
    assert plan.round_noise_gain(3) == pytest.approx(math.sqrt(np.sum(inverse[:3] ** 2)), rel=1e-12)
    assert plan.expected_cohort == 5.0 and plan.sum_noise_multiplier == pytest.approx(2.0 * plan.sensitivity)


def test_the_whole_run_is_paid_in_round_one_as_one_gaussian_of_mu_one_over_sigma():
    # Prepare
    config = mf_config(sigma=2.0)
    plan = make_privacy_plan(config.privacy, config.federation, 10)
    ledger = plan.charge(PrivacyLedger(), 1)
    # Execute: later rounds add nothing
    after = plan.charge(plan.charge(ledger, 2), 3)
    eps = plan.epsilon(after)
    # Assert: one entry, and its epsilon is the closed-form mu-GDP one at mu = 1/2 (Dong, Roth, Su 2019)
    assert after is ledger and len(after.entries) == 1 and after.entries[0].round == 1
    assert gaussian_dp_delta(0.5, eps) == pytest.approx(plan.delta, rel=1e-4)
    assert plan.stop_reason(after, 4) is None and plan.allows_next_round(after)


def test_a_budget_below_the_whole_run_stops_before_round_one():
    config = apply_overrides(mf_config(sigma=2.0), {"privacy": {"target_epsilon": 0.1}})
    plan = make_privacy_plan(config.privacy, config.federation, 10)
    assert "privacy budget reached: round 1" in plan.stop_reason(PrivacyLedger(), 1)


def test_rounds_release_the_clipped_mean_plus_the_correlated_noise(monkeypatch):
    # Prepare: P = 3, 10 clients in 2 cyclic groups of 5, sigma = 2, clip 1; the secure normals replaced by known ones
    config = mf_config(rounds=4, groups=2, sigma=2.0)
    plan = make_privacy_plan(config.privacy, config.federation, 10)
    pipeline = build_pipeline(config.strategy, config.lora, None, plan, config.compression)
    normals = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    draws = iter(normals)
    monkeypatch.setattr("fedlm.privacy.correlated_noise.secure_gaussian", lambda size, std: next(draws))
    state = initial_state(np.zeros(3, np.float32), pipeline)
    expected_noise = banded.correlated_noise(np.array(plan.coefficients), normals.astype(np.float64))
    scale = plan.sum_noise_multiplier * 1.0 / 5  # s sigma C on the sum, divided by the expected cohort
    update = np.array([0.3, 0.0, -0.4], np.float32)  # norm 0.5 < clip: unchanged by the clip
    for t in range(4):
        cohort = tuple(f"g{t % 2}-{i}" for i in range(5))
        rnd = open_round(state, cohort, pipeline)
        for client in cohort:
            accept_update(rnd, Update(t + 1, state.version, client, 1, update.copy(), {"steps": 1}))
        before = state.global_vector.copy()
        # Execute
        state, outcome = close_round(state, rnd)
        # Assert: the round's step is the mean (5 x update / 5) plus scale x w_t
        np.testing.assert_allclose(state.global_vector - before, update + scale * expected_noise[t], rtol=1e-5, atol=1e-6)
        assert len(state.noise_state) == 1 and outcome.committed
    assert len(state.ledger.entries) == 1
