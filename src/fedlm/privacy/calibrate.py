"""The least noise that keeps a run of Poisson-sampled DP-FedAvg rounds within a privacy budget.

DP-FedAvg (McMahan et al. 2018, arXiv:1710.06963) fixes the noise multiplier z before the run;
this finds the smallest z whose epsilon after `rounds` rounds is at most the target, by
dp-accounting's `calibrate_dp_mechanism` (Brent's method on epsilon(z) - target) over an
explicit bracket, with epsilon from the RDP (Mironov 2017, arXiv:1702.07476; Mironov, Talwar,
Zhang 2019, arXiv:1908.10530) or PLD (Doroshenko et al. 2022, arXiv:2207.04380) accountant.
"""

from __future__ import annotations

from collections.abc import Callable

from dp_accounting import mechanism_calibration

from fedlm.privacy.accountant import (
    check_accountant,
    check_delta,
    check_positive,
    epsilon,
    make_accountant,
    poisson_rounds_event,
    quiet_unconverged_orders,
)

MAX_NOISE = 1e4  # past this no round carries any signal; a target that needs more is treated as unreachable


def calibrate_noise(
    *,
    target_epsilon: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    accountant: str = "rdp",
    tolerance: float = 1e-3,
) -> float:
    """The smallest z (to within `tolerance`) with epsilon(z) <= target_epsilon.

    Guarantee: epsilon(z) <= target_epsilon < epsilon(z - tolerance).
    """
    target = check_positive("target_epsilon", target_epsilon)
    tol = check_positive("tolerance", tolerance)
    check_delta(delta)
    check_accountant(accountant)
    poisson_rounds_event(noise_multiplier=1.0, sample_rate=sample_rate, rounds=rounds)  # validates both

    def cost(z: float) -> float:
        return epsilon(noise_multiplier=z, sample_rate=sample_rate, rounds=rounds, delta=delta, accountant=accountant)

    low, high = _bracket(cost, target, tol)
    if low is None:  # within target with next to no noise
        return high
    with quiet_unconverged_orders():
        z = mechanism_calibration.calibrate_dp_mechanism(
            lambda: make_accountant(accountant),
            lambda z: poisson_rounds_event(noise_multiplier=z, sample_rate=sample_rate, rounds=rounds),
            target,
            delta,
            mechanism_calibration.ExplicitBracketInterval(low, high),
            tol=tol,
        )
    return _tighten(cost, float(z), target, tol, high)


def _bracket(cost: Callable[[float], float], target: float, tol: float) -> tuple[float | None, float]:
    """(low, high) with cost(low) > target >= cost(high), doubling or halving from z = 1; low None if none."""
    high = 1.0
    while cost(high) > target:
        if high >= MAX_NOISE:
            raise ValueError(
                f"target_epsilon={target:g} is out of reach: even noise multiplier {MAX_NOISE:g} spends more; "
                "raise target_epsilon or delta, or lower sample_rate or rounds"
            )
        high = min(2 * high, MAX_NOISE)
    low = high / 2
    while cost(low) <= target:
        if low <= tol:
            return None, low
        low, high = low / 2, low
    return low, high


def _tighten(cost: Callable[[float], float], z: float, target: float, tol: float, high: float) -> float:
    """Make the guarantee exact: step up until within target, down while z - tol still is."""
    while cost(z) > target:  # calibrate_dp_mechanism promises this never runs; cheap to make sure
        z = min(z + tol, high)
    while z - tol > 0 and cost(z - tol) <= target:
        z -= tol
    return z
