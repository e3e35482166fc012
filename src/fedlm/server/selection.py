"""Cohort sampling: a fixed-size uniform sample, or Poisson sampling with rate q.

Poisson sampling (each client joins independently with probability q) is what the
privacy amplification of DP-FedAvg assumes (McMahan et al. 2018, arXiv:1710.06963).
Cohorts are returned sorted by client id so that updates are folded in a fixed order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_fixed(population: Sequence[str], size: int, rng: np.random.Generator) -> tuple[str, ...]:
    """`size` distinct clients drawn uniformly (all of them if the population is smaller)."""
    if size < 1:
        raise ValueError(f"cohort size must be >= 1, got {size}")
    if not population:
        raise ValueError("cannot sample a cohort from an empty population")
    pick = rng.choice(len(population), size=min(size, len(population)), replace=False)
    return tuple(sorted(population[i] for i in pick))


def sample_poisson(population: Sequence[str], rate: float, rng: np.random.Generator) -> tuple[str, ...]:
    """Each client independently with probability `rate`; the cohort may be empty."""
    if not 0 < rate <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {rate}")
    keep = rng.random(len(population)) < rate
    return tuple(sorted(c for c, k in zip(population, keep, strict=True) if k))
