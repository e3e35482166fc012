"""Who trains next: eligibility from declared traits, over-selection, fairness.

Cross-device practice (Bonawitz et al. 2019, "Towards Federated Learning at Scale: System
Design", arXiv:1902.01046): only devices that are charging, on an unmetered network and
idle check in; the server invites more than it needs (over-selection) and closes the
round when enough updates arrived or the deadline passed, refusing the late ones.
Fairness here: among the available eligible clients, those that contributed least
recently go first; ties are broken by a generator seeded from (run seed, round).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fedlm.core.rng import make_rng
from fedlm.service.settings import SchedulingSection


@dataclass(frozen=True)
class Traits:
    """What a client says about itself when it checks in. Self-reported: a policy input, not a proof."""

    charging: bool = False
    unmetered: bool = False
    free_memory_mb: int = 0
    region: str = ""


def ineligibility(traits: Traits, policy: SchedulingSection) -> str | None:
    """Why a client with `traits` may not train under `policy`, or None when it may."""
    if policy.require_charging and not traits.charging:
        return "the policy requires a charging device"
    if policy.require_unmetered and not traits.unmetered:
        return "the policy requires an unmetered network"
    if traits.free_memory_mb < policy.min_free_memory_mb:
        return f"the policy requires {policy.min_free_memory_mb} MB of free memory, the client has {traits.free_memory_mb}"
    if policy.regions and traits.region not in policy.regions:
        return f"region {traits.region!r} is not among {list(policy.regions)}"
    return None


def invited_count(target: int, over_selection: float) -> int:
    """Clients to invite so that `target` updates arrive despite dropouts: ceil(target * (1 + over))."""
    return math.ceil(target * (1 + over_selection) - 1e-9)


def select_cohort(
    available: list[str], last_round: Mapping[str, int], *, size: int, seed: int, round: int
) -> tuple[str, ...]:
    """The `size` available clients that contributed least recently (never = round 0 comes first).

    Ties are ordered by a seeded shuffle, so the same inputs always give the same cohort.
    """
    rng = make_rng(seed, "service-cohort", round)
    order = rng.permutation(len(available))
    shuffled = [available[i] for i in order]
    ranked = sorted(shuffled, key=lambda c: last_round.get(c, 0))  # stable: the shuffle breaks ties
    return tuple(sorted(ranked[:size]))
