"""A run's differential-privacy plan: what each round costs, and whether the budget allows it.

User-level DP-FedAvg (McMahan et al. 2018, arXiv:1710.06963): neighbouring data sets
differ by one client's whole data. Each round is one sampled Gaussian mechanism on the
sum of clipped updates; the ledger records it and dp-accounting composes the ledger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedlm.config import FederationSettings, PrivacySettings
from fedlm.privacy.accountant import gaussian_round_event
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

    @property
    def expected_cohort(self) -> float:
        return self.sample_rate * self.population if self.sampling == "poisson" else float(self.cohort)

    def round_event(self, *, arrived: int | None = None):
        """The DP event of one round. With distributed noise, fewer arrivals carry less noise."""
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
        if not self.target_epsilon:
            return True
        return ledger.epsilon_if(self.round_event(), delta=self.delta, accountant=self.accountant) <= self.target_epsilon

    def stop_reason(self, ledger: PrivacyLedger, next_round: int) -> str | None:
        """Why round `next_round` may not run (it would take epsilon past the target), or None.

        The simulation and the service both stop on this message."""
        if not self.target_epsilon:
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
    expected = federation.sample_rate * population if federation.sampling == "poisson" else float(cohort)
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
        count_noise=count_noise,
    )
