"""Cohort sampling: a fixed-size uniform sample, Poisson sampling with rate q, or cyclic groups.

Poisson sampling (each client joins independently with probability q) is what the
privacy amplification of DP-FedAvg assumes (McMahan et al. 2018, arXiv:1710.06963).
Cyclic participation (the population split once, by a seeded hash of each client's id, into G
groups that take turns) is what
banded matrix-factorization DP-FTRL accounts for (Choquette-Choo et al. 2023,
arXiv:2306.08153): a client trains exactly once every G rounds.
Cohorts are returned sorted by client id so that updates are folded in a fixed order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedlm.core.rng import derive_seed


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


def cyclic_groups(population: Sequence[str], groups: int, seed: int) -> tuple[tuple[str, ...], ...]:
    """The population split into `groups` groups, each client by a seeded hash of its own id.

    A client's group depends on nothing but the seed and its id, so adding or removing one client
    moves no other: the banded factor's sensitivity then covers add/remove-one neighbours, which a
    shuffle of the whole population would not. Group sizes vary around N / groups.
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    members: list[list[str]] = [[] for _ in range(groups)]
    for client in population:
        members[derive_seed(seed, "cyclic-group", client) % groups].append(client)
    return tuple(tuple(sorted(group)) for group in members)


def cyclic_cohort(groups: Sequence[tuple[str, ...]], round: int) -> tuple[str, ...]:
    """Round `round` (from 1)'s cohort: group (round - 1) mod G."""
    if round < 1:
        raise ValueError(f"round must be >= 1, got {round}")
    return groups[(round - 1) % len(groups)]
