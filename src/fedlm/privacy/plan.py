"""A run's differential-privacy plan: what each round costs, and whether the budget allows it.

User-level DP-FedAvg (McMahan et al. 2018, arXiv:1710.06963): neighbouring data sets
differ by one client's whole data. Each round is one sampled Gaussian mechanism on the
sum of clipped updates; the ledger records it and dp-accounting composes the ledger.

Under privacy.mechanism = "banded_mf" (banded matrix-factorization DP-FTRL, Choquette-Choo
et al. 2023, arXiv:2306.08153; see fedlm.privacy.banded) the whole run is one Gaussian
mechanism on C x with noise multiplier sigma = privacy.noise_multiplier relative to the
factor's sensitivity s (mu-GDP with mu = 1 / sigma): the ledger records it once, in round 1,
before any noised model is released, and later rounds cost nothing more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import dp_accounting
import numpy as np

from fedlm.config import FederationSettings, PrivacySettings
from fedlm.privacy.accountant import gaussian_round_event
from fedlm.privacy import banded
from fedlm.privacy.adaptive_clip import default_count_noise
from fedlm.privacy.ledger import PrivacyLedger


@dataclass(frozen=True)
class PrivacyPlan:
    noise_multiplier: float  # z of each round's whole release (adaptive clipping's count included)
    delta: float
    accountant: str
    target_epsilon: float  # 0 = no budget
    sampling: str
    sample_rate: float
    population: int
    cohort: int  # fixed-size sampling's cohort
    placement: str
    adaptive_clip: bool
    target_quantile: float
    clip_lr: float
    count_noise: float  # adaptive clipping: the count's noise multiplier
    mechanism: str = "gaussian"  # or "banded_mf"
    noise_aware_lr: bool = False  # scale each round's step by the James-Stein factor of its noised mean
    groups: int = 1  # cyclic sampling: the groups that take turns
    coefficients: tuple[float, ...] = ()  # banded_mf: c_0..c_{b-1} of the Toeplitz factor C
    sensitivity: float = 0.0  # banded_mf: s, the factor's sensitivity for a client of clip norm 1
    noise_gains: tuple[float, ...] = field(default=(), repr=False)  # banded_mf: ||(C^-1)[t, :]||, round t's noise std / (s sigma)

    @property
    def expected_cohort(self) -> float:
        if self.sampling == "cyclic":
            return self.population / self.groups
        return self.sample_rate * self.population if self.sampling == "poisson" else float(self.cohort)

    @property
    def correlated(self) -> bool:
        return self.mechanism == "banded_mf"

    @property
    def sum_noise_multiplier(self) -> float:
        """The noise std on a round's sum over the clip norm before correlation: z, or s sigma under banded_mf."""
        return self.sensitivity * self.noise_multiplier if self.correlated else self.noise_multiplier

    def round_noise_gain(self, round: int) -> float:
        """Round `round`'s noise std on its sum as a multiple of sum_noise_multiplier x clip norm (1 but under banded_mf)."""
        return self.noise_gains[round - 1] if self.correlated else 1.0

    def charge(self, ledger: PrivacyLedger, round: int, *, arrived: int | None = None) -> PrivacyLedger:
        """The ledger after round `round` released its model: its event added, or, under banded_mf, the whole run's
        once (round 1 pays it before anything is released)."""
        if self.correlated and ledger.entries:
            return ledger
        return ledger.record(round, self.round_event(arrived=arrived))

    def round_event(self, *, arrived: int | None = None):
        """The DP event of one round (under banded_mf: of the whole run). With distributed noise, fewer arrivals
        carry less noise."""
        if self.correlated:
            return dp_accounting.GaussianDpEvent(self.noise_multiplier)
        z = self.noise_multiplier
        if self.placement == "distributed" and arrived is not None and arrived < self.cohort:
            z *= math.sqrt(max(arrived, 1) / self.cohort)
        return gaussian_round_event(
            noise_multiplier=z, sampling=self.sampling, sample_rate=self.sample_rate,
            population=self.population, cohort=self.cohort,
        )

    def epsilon(self, ledger: PrivacyLedger) -> float:
        return ledger.epsilon(delta=self.delta, accountant=self.accountant)

    def allows_next_round(self, ledger: PrivacyLedger) -> bool:
        """False when one more round would take epsilon past the target."""
        if not self.target_epsilon or (self.correlated and ledger.entries):
            return True
        return ledger.epsilon_if(self.round_event(), delta=self.delta, accountant=self.accountant) <= self.target_epsilon

    def stop_reason(self, ledger: PrivacyLedger, next_round: int) -> str | None:
        """Why round `next_round` may not run (it would take epsilon past the target), or None.

        The simulation and the service both stop on this message."""
        if not self.target_epsilon or (self.correlated and ledger.entries):  # banded_mf: paid in full at round 1
            return None
        after = ledger.epsilon_if(self.round_event(), delta=self.delta, accountant=self.accountant)
        if after <= self.target_epsilon:
            return None
        return (f"privacy budget reached: round {next_round} would take epsilon from {self.epsilon(ledger):.3f} "
                f"to {after:.3f}, past privacy.target_epsilon = {self.target_epsilon}")


def default_delta(population: int) -> float:
    """1 / population^1.1: below 1/population, as user-level DP needs."""
    return 1.0 / population**1.1


def make_privacy_plan(privacy: PrivacySettings, federation: FederationSettings, population: int) -> PrivacyPlan | None:
    if not privacy.enabled:
        return None
    delta = privacy.delta or default_delta(population)
    if delta >= 1.0 / population:
        raise ValueError(f"privacy.delta = {delta:g} must be below 1 / population = {1 / population:g}")
    cohort = min(federation.clients_per_round, population)
    expected = {"poisson": federation.sample_rate * population, "cyclic": population / federation.groups}.get(
        federation.sampling, float(cohort))
    count_noise = privacy.count_noise_multiplier or default_count_noise(expected)
    if privacy.adaptive_clip and 2 * count_noise <= privacy.noise_multiplier:
        raise ValueError(
            f"privacy.count_noise_multiplier = {count_noise:g} is too small for privacy.noise_multiplier = "
            f"{privacy.noise_multiplier:g}: adaptive clipping's count alone would spend the whole budget; "
            f"set it above {privacy.noise_multiplier / 2:g}"
        )
    return PrivacyPlan(
        noise_multiplier=privacy.noise_multiplier, delta=delta, accountant=privacy.accountant,
        target_epsilon=privacy.target_epsilon, sampling=federation.sampling, sample_rate=federation.sample_rate,
        population=population, cohort=cohort, placement=privacy.placement, adaptive_clip=privacy.adaptive_clip,
        target_quantile=privacy.target_quantile, clip_lr=privacy.clip_lr,
        count_noise=count_noise, groups=federation.groups, noise_aware_lr=privacy.noise_aware_lr, **banded_fields(privacy, federation, population),
    )


def banded_fields(privacy: PrivacySettings, federation: FederationSettings, population: int) -> dict:
    """banded_mf's factor over federation.rounds: its coefficients, sensitivity under cyclic groups, per-round gains."""
    if privacy.mechanism != "banded_mf":
        return {}
    rounds, groups = federation.rounds, federation.groups
    coefficients = banded.optimal_banded_coefficients(rounds, privacy.bands or groups)
    gains = np.sqrt(np.cumsum(banded.inverse_coefficients(coefficients, rounds) ** 2))
    separation = min(groups, rounds)  # groups past round T never train: each client then trains at most once
    return {"mechanism": "banded_mf", "coefficients": tuple(float(c) for c in coefficients),
            "sensitivity": banded.cyclic_sensitivity(coefficients, rounds, separation),
            "noise_gains": tuple(float(g) for g in gains)}
