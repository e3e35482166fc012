"""The masking graph of SecAgg+ (Bell et al., CCS 2020): each client is joined to k others.

A random k-regular graph in the form Bell et al. use: a Harary graph (clients on a
circle, each joined to the k/2 nearest on either side) over a random order of the
clients. k is rounded up to an even number and capped at n - 1, where the graph is
complete and the protocol is the original SecAgg.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def effective_degree(neighbours: int, clients: int) -> int:
    """The k actually used: 0 means all others; odd k rounds up; never more than n - 1."""
    if neighbours < 0:
        raise ValueError(f"neighbours must be >= 0, not {neighbours}")
    if neighbours == 0 or neighbours >= clients - 1:
        return clients - 1
    return min(clients - 1, neighbours + neighbours % 2)


def logarithmic_degree(clients: int) -> int:
    """k = 2 log2(n), rounded up: the degree Bell et al. show suffices for privacy and recovery."""
    return effective_degree(math.ceil(2 * math.log2(max(clients, 2))), clients)


def threshold_for(degree: int, fraction: float) -> int:
    """Shares needed to recover a secret: more than `fraction` of a client's neighbours."""
    if not 0 < fraction < 1:
        raise ValueError(f"the threshold fraction must be in (0, 1), not {fraction}")
    return min(degree, math.floor(fraction * degree) + 1)


def neighbour_graph(clients: Sequence[str], degree: int, rng: np.random.Generator) -> dict[str, tuple[str, ...]]:
    """Each client's neighbours (sorted ids) in a Harary graph over a random order of `clients`."""
    n = len(clients)
    if n < 2:
        raise ValueError("secure aggregation needs at least 2 clients")
    if not 1 <= degree <= n - 1:
        raise ValueError(f"degree must be between 1 and {n - 1}, not {degree}")
    order = [clients[i] for i in rng.permutation(n)]
    if degree == n - 1:
        return {c: tuple(sorted(set(clients) - {c})) for c in clients}
    half = degree // 2
    links: dict[str, set[str]] = {c: set() for c in clients}
    for position, client in enumerate(order):
        for step in range(1, half + 1):
            other = order[(position + step) % n]
            links[client].add(other)
            links[other].add(client)
    return {c: tuple(sorted(links[c])) for c in clients}
