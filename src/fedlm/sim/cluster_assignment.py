"""Which global a client trains (or is scored) under, in clustered federated learning (sim.clustered).

IFCA (Ghosh et al. 2020, arXiv:2006.04088): the global whose loss on the client's own first
training batches is lowest; while every global is still the same vector, a seeded deal; or a
declared segment (the plays' genre, a folder client's name prefix). Losses are the client work's
own, without gradient; probes are remembered per (client, global, version), and nothing here
holds text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedlm.core.rng import make_rng
from fedlm.data.blocks import Blocks
from fedlm.data.plays import play_genres
from fedlm.server.rounds import ServerState
from fedlm.settings_checks import require
from fedlm.sim.setup import Simulation


@dataclass(frozen=True)
class Assignment:
    """Who trains (or is scored) under which global, how that was decided, and each client's probe loss."""

    by_client: dict[str, str]
    how: str  # "loss" (IFCA), "draw" (the globals are still identical) or "key"
    probe_loss: dict[str, float] = field(default_factory=dict)  # under "loss": the client's loss under its global
    rebalanced: int = 0  # under "loss": clients moved to a global IFCA left with fewer than clusters.min_clients


# --- which global a client belongs to --------------------------------------------------------------


def segment_of(client_id: str, key: str, genres: dict[str, str] | None = None) -> str:
    """The segment clusters.key names for `client_id`: its play's genre, or its id before the first "/" or "-"."""
    if key == "genre":
        play = client_id.split("/", 1)[0]
        if genres is None or play not in genres:
            raise ValueError(f"client {client_id!r}: clusters.key = 'genre' knows no genre for play {play!r}")
        return genres[play]
    segment = client_id.replace("-", "/").split("/", 1)[0]
    if segment in ("", ".", ".."):
        raise ValueError(f"client {client_id!r}: clusters.key = 'prefix' needs an id that starts with a segment name "
                         "before its first '/' or '-'")
    return segment


def client_segments(clients: Sequence[str], key: str) -> dict[str, str]:
    genres = play_genres() if key == "genre" else None
    return {c: segment_of(c, key, genres) for c in clients}


def cluster_keys(sim: Simulation) -> tuple[str, ...]:
    """The globals' keys: "0".."K-1" under IFCA, the segments found among every client under assign = "key"."""
    settings = sim.config.clusters
    if settings.assign == "loss":
        return tuple(str(i) for i in range(settings.count))
    found = sorted(set(client_segments((*sim.population, *sim.eval_clients), settings.key).values()))
    require(len(found) == settings.count, "clusters.count",
            f"is {settings.count}, but clusters.key = {settings.key!r} puts this run's clients in {len(found)} segments "
            f"({', '.join(found)}): set clusters.count = {len(found)}")
    return tuple(found)


def are_identical(states: dict[str, ServerState]) -> bool:
    first, *others = states.values()
    return all(np.array_equal(first.global_vector, s.global_vector) for s in others)


def drawn_assignment(clients: Sequence[str], keys: Sequence[str], *, seed: int, round: int, purpose: str) -> dict[str, str]:
    """A seeded permutation of `clients` dealt to `keys` round-robin: every key gets a share (counts differ by <= 1)."""
    order = make_rng(seed, "cluster-draw", purpose, round).permutation(len(clients))
    return {clients[int(i)]: keys[position % len(keys)] for position, i in enumerate(order)}


def probe_batches(blocks: Blocks, batch_size: int, count: int) -> list[Blocks]:
    """The client's first `count` training batches of `batch_size` blocks, in order (fewer if it has fewer)."""
    end = min(len(blocks), batch_size * count)
    return [blocks.take(np.arange(start, min(start + batch_size, end))) for start in range(0, end, batch_size)]


ProbeMemo = dict[tuple[str, str, int], float]  # (client, key, the global's version) -> the client's probe loss


@torch.no_grad()
def probe_losses(sim: Simulation, states: dict[str, ServerState], batches: dict[str, list[Blocks]],
                 private: dict[str, np.ndarray], memo: ProbeMemo) -> np.ndarray:
    """[clients, globals]: each client's mean loss on its probe batches under each global (no gradient).

    A global's version names its vector, so a loss already computed for (client, key, version) is
    taken from `memo` (an evaluation client probed after round t is probed again, unchanged, at
    round t + 1); not with private parameters, which change each time their client trains.
    """
    adapter, clients = sim.adapter, list(batches)
    own_private = adapter.initial_private.size > 0
    losses = np.empty((len(clients), len(states)), np.float64)
    adapter.model.eval()
    for column, (key, state) in enumerate(states.items()):
        known = {} if own_private else {c: memo[c, key, state.version] for c in clients if (c, key, state.version) in memo}
        if len(known) < len(clients):
            adapter.write_shared(state.global_vector)
        for row, client in enumerate(clients):
            if client in known:
                losses[row, column] = known[client]
                continue
            if own_private:  # the client's own private parameters, as it would train with them
                adapter.write_private(private.get(client, adapter.initial_private))
            losses[row, column] = np.mean([float(sim.work.loss(adapter.model, b)) for b in batches[client]])
            if not own_private:
                memo[client, key, state.version] = losses[row, column]
    return losses


def forget_old_probes(memo: ProbeMemo, states: dict[str, ServerState]) -> None:
    """Drop the losses under versions the globals have moved past: the memo holds clients x globals at most."""
    for entry in [e for e in memo if e[2] != states[e[1]].version]:
        del memo[entry]


def assign_clients(sim: Simulation, states: dict[str, ServerState], clients: Sequence[str], *, round: int, purpose: str,
                   blocks_of: Callable[[str], Blocks | None], private: dict[str, np.ndarray], memo: ProbeMemo) -> Assignment:
    """Each client's global: by segment, by a seeded draw while the globals are identical, else by IFCA's lowest loss.

    A client with no training block to probe (an evaluation client whose samples all went to its
    test split) is dealt by the seeded draw.
    """
    settings, keys = sim.config.clusters, tuple(states)
    if settings.assign == "key":
        return Assignment(client_segments(clients, settings.key), "key")
    drawn = drawn_assignment(clients, keys, seed=sim.config.run.seed, round=round, purpose=purpose)
    if are_identical(states):
        return Assignment(drawn, "draw")
    batches = {c: probe_batches(b, sim.config.client.batch_size, settings.probe_batches)
               for c in clients if (b := blocks_of(c)) is not None and len(b)}
    losses = probe_losses(sim, states, batches, private, memo)
    chosen = losses.argmin(axis=1) if len(batches) else np.empty(0, np.int64)
    moved = 0
    if purpose == "cohort" and settings.min_clients:  # evaluation clients are scored under their best global
        chosen, moved = rebalance(chosen, losses, settings.min_clients)
    by_client = dict(drawn)
    by_client.update({c: keys[int(k)] for c, k in zip(batches, chosen, strict=True)})
    probe = {c: float(losses[row, int(k)]) for row, (c, k) in enumerate(zip(batches, chosen, strict=True))}
    return Assignment({c: by_client[c] for c in clients}, "loss", probe, moved)


def rebalance(chosen: np.ndarray, losses: np.ndarray, minimum: int) -> tuple[np.ndarray, int]:
    """IFCA's choices with every global holding at least `minimum` clients (fewer if there are not enough for all):
    a global short of them takes, one at a time, the client with the least regret (its loss under that global less
    its loss under its choice) from a global that keeps at least `minimum`. The new choices and the clients moved."""
    chosen, globals_ = chosen.copy(), losses.shape[1]
    minimum = min(minimum, len(chosen) // globals_)
    moved = 0
    for key in range(globals_):
        while (chosen == key).sum() < minimum:
            counts = np.bincount(chosen, minlength=globals_)
            donors = np.flatnonzero((chosen != key) & (counts[chosen] > minimum))
            regret = losses[donors, key] - losses[donors, chosen[donors]]
            chosen[donors[int(np.argmin(regret))]] = key  # ties: the first donor in cohort order
            moved += 1
    return chosen, moved


def members(assignment: Assignment, clients: Sequence[str], key: str) -> tuple[str, ...]:
    """The clients assigned to `key`, in the order of `clients` (the cohort's sorted order)."""
    return tuple(c for c in clients if assignment.by_client[c] == key)


