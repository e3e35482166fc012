"""The per-round signal-to-noise figure: closed form, and measured on a DP round of the real round engine."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedlm.config import RunConfig, apply_overrides
from fedlm.core.types import Update
from fedlm.privacy.plan import make_privacy_plan
from fedlm.privacy.round_snr import round_signal_to_noise
from fedlm.server.rounds import accept_update, close_round, initial_state, open_round, signal_to_noise
from fedlm.updates.build import build_pipeline


def test_closed_form_by_hand():
    # sigma 0.01 over 10,000 coordinates: noise norm 1; a released norm of sqrt(5) leaves a signal of 2
    figures = round_signal_to_noise(math.sqrt(5.0), 0.01, 10_000)
    assert figures["noise_norm"] == pytest.approx(1.0) and figures["signal_to_noise"] == pytest.approx(2.0)
    # a released norm below the expected noise norm estimates no signal; no noise gives no ratio
    assert round_signal_to_noise(0.9, 0.01, 10_000)["signal_to_noise"] == 0.0
    assert round_signal_to_noise(3.0, 0.0, 10_000)["signal_to_noise"] is None


@pytest.mark.parametrize("signal_to_noise_wanted", [0.5, 2.0])
def test_a_central_dp_round_reports_the_ratio_it_was_built_with(signal_to_noise_wanted):
    # Prepare: 400 of an expected cohort of 400 send the same update s; the released mean is s + N(0, (zC/400)^2)
    size, clients, clip, z = 40_000, 400, 2.0, 1.0
    run = apply_overrides(RunConfig(), {"strategy": {"clip_norm": clip, "weighting": "uniform"},
                                        "privacy": {"noise_multiplier": z},
                                        "federation": {"clients_per_round": clients, "sampling": "fixed"}})
    plan = make_privacy_plan(run.privacy, run.federation, 1000)
    pipeline = build_pipeline(run.strategy, run.lora, None, plan, run.compression)
    noise_norm = z * clip / clients * math.sqrt(size)
    direction = np.random.default_rng(0).normal(size=size)
    update = (direction / np.linalg.norm(direction) * signal_to_noise_wanted * noise_norm).astype(np.float32)
    assert np.linalg.norm(update) <= clip  # within the clip: the server sees s itself
    state = initial_state(np.zeros(size, np.float32), pipeline)
    rnd = open_round(state, tuple(f"c{i}" for i in range(clients)), pipeline)
    for i in range(clients):
        accept_update(rnd, Update(1, 0, f"c{i}", 1, update.copy(), {}))
    # Execute
    _, outcome = close_round(state, rnd)
    figures = signal_to_noise(rnd, outcome)
    # Assert: the expected noise norm exactly, the ratio within 6 standard deviations of the estimate (P = 40,000)
    assert figures["noise_norm"] == pytest.approx(noise_norm, rel=1e-9)
    assert figures["signal_to_noise"] == pytest.approx(signal_to_noise_wanted, abs=0.05)


def test_without_dp_there_is_no_figure():
    state = initial_state(np.zeros(8, np.float32))
    rnd = open_round(state, ("a",))
    accept_update(rnd, Update(1, 0, "a", 1, np.ones(8, np.float32), {}))
    _, outcome = close_round(state, rnd)
    assert signal_to_noise(rnd, outcome) == {} and outcome.released_norm == pytest.approx(math.sqrt(8))


def test_james_stein_factor_closed_forms():
    from fedlm.privacy.round_snr import james_stein_factor
    # |m|^2 = 25, sigma^2 P = 0.5^2 * 36 = 9 -> 1 - 9/25 = 0.64; noise alone or more -> 0; no noise -> 1
    assert james_stein_factor(5.0, 0.5, 36) == pytest.approx(0.64)
    assert james_stein_factor(3.0, 0.5, 36) == 0.0 and james_stein_factor(0.0, 0.5, 36) == 0.0
    assert james_stein_factor(5.0, 0.0, 36) == 1.0


def test_a_noise_aware_round_steps_by_the_james_stein_share_of_its_noised_mean(monkeypatch):
    import numpy as np
    from fedlm.config import RunConfig, apply_overrides
    from fedlm.core.types import Update
    from fedlm.privacy.plan import make_privacy_plan
    from fedlm.server.rounds import accept_update, close_round, initial_state, open_round, signal_to_noise
    from fedlm.updates.build import build_pipeline
    # Prepare: 4 clients, P = 4, clip 1, z = 2 -> std on the mean 2 * 1 / 4 = 0.5; the sum's noise draw fixed to std = 2 on every coordinate
    run = apply_overrides(RunConfig(), {"strategy": {"clip_norm": 1.0, "weighting": "uniform"},
                                        "federation": {"clients_per_round": 4},
                                        "privacy": {"noise_multiplier": 2.0, "noise_aware_lr": True}})
    plan = make_privacy_plan(run.privacy, run.federation, 100)
    pipeline = build_pipeline(run.strategy, run.lora, None, plan, run.compression)
    monkeypatch.setattr("fedlm.updates.server.add_gaussian", lambda vector, std: vector.__iadd__(np.float32(std)))
    state = initial_state(np.zeros(4, np.float32), pipeline)
    rnd = open_round(state, ("a", "b", "c", "d"), pipeline)
    for client in rnd.cohort:
        accept_update(rnd, Update(1, 0, client, 1, np.array([0.9, 0, 0, 0], np.float32), {"steps": 1}))
    # Execute
    new, outcome = close_round(state, rnd)
    # Assert: mean = (0.9 + 0.5, 0.5, 0.5, 0.5) (noise 2 on the sum, over 4); |m|^2 = 1.96 + 0.75 = 2.71;
    # sigma^2 P = 0.25 * 4 = 1 -> factor 1 - 1/2.71
    factor = 1 - 1 / 2.71
    np.testing.assert_allclose(new.global_vector, factor * np.array([1.4, 0.5, 0.5, 0.5]), rtol=1e-5)
    assert signal_to_noise(rnd, outcome)["server_lr_scale"] == pytest.approx(factor, rel=1e-5)
