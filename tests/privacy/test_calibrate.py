"""Tests of noise calibration: the returned noise meets the budget, and barely."""

from __future__ import annotations

import math

import pytest

from fedlm.privacy.accountant import epsilon
from fedlm.privacy.calibrate import calibrate_noise

DELTA = 1e-5


@pytest.mark.parametrize(
    ("target", "q", "rounds", "accountant"),
    [(2.0, 0.01, 1000, "rdp"), (0.5, 0.05, 100, "rdp"), (8.0, 1.0, 5, "rdp"), (0.5, 1.0, 3, "pld")],
)
def test_calibrated_noise_is_the_least_within_budget(target: float, q: float, rounds: int, accountant: str):
    # Prepare
    tolerance = 1e-3
    # Execute
    z = calibrate_noise(target_epsilon=target, sample_rate=q, rounds=rounds, delta=DELTA,
                        accountant=accountant, tolerance=tolerance)
    # Assert
    def spent(noise: float) -> float:
        return epsilon(noise_multiplier=noise, sample_rate=q, rounds=rounds, delta=DELTA, accountant=accountant)
    assert spent(z) <= target
    assert spent(z - tolerance) > target


@pytest.mark.parametrize("z0", [0.9, 1.3, 4.0])
def test_round_trip_with_epsilon(z0: float):
    # Prepare
    target = epsilon(noise_multiplier=z0, sample_rate=0.02, rounds=300, delta=DELTA)
    # Execute
    z = calibrate_noise(target_epsilon=target, sample_rate=0.02, rounds=300, delta=DELTA, tolerance=1e-4)
    # Assert
    assert abs(z - z0) <= 1e-4


def test_an_unreachable_target_is_rejected():
    # one unsampled round at z = 1e4 still spends about 5e-4
    with pytest.raises(ValueError, match="out of reach"):
        calibrate_noise(target_epsilon=1e-6, sample_rate=1.0, rounds=1, delta=DELTA)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": -1.0}, "target_epsilon"),
        ({"target_epsilon": math.inf}, "target_epsilon"),
        ({"target_epsilon": math.nan}, "target_epsilon"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 2.0}, "sample_rate"),
        ({"rounds": 0}, "rounds"),
        ({"delta": 1.0}, "delta"),
        ({"accountant": "gdp"}, "accountant"),
        ({"tolerance": 0.0}, "tolerance"),
    ],
)
def test_invalid_inputs_are_rejected_by_name(kwargs: dict, name: str):
    arguments = {"target_epsilon": 1.0, "sample_rate": 0.1, "rounds": 10, "delta": DELTA} | kwargs
    with pytest.raises(ValueError, match=name):
        calibrate_noise(**arguments)
