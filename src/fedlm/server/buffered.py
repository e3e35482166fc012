"""Buffered asynchronous aggregation: fold possibly stale updates, step the global every K of them.

Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation" (FedBuff),
arXiv:2106.06639, Algorithm 1. A client trains from whatever global version it was handed; its
update arrives when the server may have moved on by s = version now - version started from (the
staleness). An update past `max_staleness`, or from a version the server has not made, is refused
with a reason. Otherwise it is folded with the weight

    client weight (1, or its samples) x w(s),   w(s) = 1/sqrt(1+s) ("sqrt") or 1 ("constant")

into one preallocated accumulator, and once `buffer_size` (K) updates are buffered the server
takes a step: the sum divided by the buffered client weights (K under uniform weighting, as the
paper divides by K, so stale updates shorten the step rather than being renormalized away), then
the same server optimizer as a synchronous round (fedlm.updates.server: FedAvg, FedAvgM, FedAdam,
FedYogi, FedAdagrad), into the next version. With every staleness 0 and K = the cohort this is
exactly the synchronous FedAvg round of fedlm.server.rounds: the same folds, in the same order,
divided by the same sum.

Pure like the round engine: no I/O, no clock. The buffer's accumulator is folded in place; the
global, its version and the optimizer moments live in a frozen ServerState replaced at each
step. Every check runs before anything changes, so a refused update leaves the state
byte-identical. The server keeps one float32 vector of size P besides the global (and a scratch
vector for norm bounding), never one per buffered client.
"""

from __future__ import annotations

import math
from operator import itemgetter
from dataclasses import dataclass, field

import numpy as np

from fedlm.aggregation.mean import client_weight, fold
from fedlm.core.types import Update
from fedlm.privacy.release import releasable_for
from fedlm.server.policy_settings import STALENESS_WEIGHTS, PolicySettings
from fedlm.server.rounds import ServerState, UpdateRejected, check_contents
from fedlm.updates.pipeline import Pipeline
from fedlm.updates.server import aggregate, apply_ingress, optimize


INTEGERS = (int, np.integer)  # a version is one of these (not bool); a tuple, not `int | np.integer`, built per call


class StaleUpdate(UpdateRejected):
    """An update that started from a version too old for the buffer, or from one the server has not made."""


@dataclass(frozen=True)
class BufferPolicy:
    """When the buffer steps and how it weighs staleness (from [policy], see policy_settings)."""

    buffer_size: int
    max_staleness: int
    staleness_weight: str = "sqrt"

    def __post_init__(self) -> None:
        if self.buffer_size < 1 or self.max_staleness < 0 or self.staleness_weight not in STALENESS_WEIGHTS:
            raise ValueError(f"a buffer needs buffer_size >= 1, max_staleness >= 0 and a staleness weight in "
                             f"{STALENESS_WEIGHTS}, got {self}")
        # w(s) for every staleness the buffer accepts, computed once: a lookup per update, not a call
        weights = tuple(staleness_weight(s, self.staleness_weight) for s in range(self.max_staleness + 1))
        object.__setattr__(self, "weights_by_staleness", weights)


def buffer_policy(settings: PolicySettings) -> BufferPolicy:
    return BufferPolicy(settings.buffer_size, settings.max_staleness, settings.staleness_weight)


def staleness_weight(staleness: int, kind: str) -> float:
    """w(s): 1/sqrt(1+s) for "sqrt" (FedBuff's choice), 1 for "constant"."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if kind == "sqrt":
        return 1.0 / math.sqrt(1.0 + staleness)
    if kind == "constant":
        return 1.0
    raise ValueError(f"unknown staleness weight {kind!r}; known: {STALENESS_WEIGHTS}")


@dataclass
class BufferedState:
    """The server under FedBuff: the global and its version (`server`) and the buffer being filled."""

    server: ServerState
    pipeline: Pipeline
    policy: BufferPolicy
    total: np.ndarray = field(repr=False)  # sum of client weight x w(s) x update over the buffered updates
    scratch: np.ndarray = field(repr=False)  # norm bounding writes a bounded copy of one update here
    weights: list[float] = field(default_factory=list)  # each buffered update's client weight (the divisor's terms)
    staleness: list[int] = field(default_factory=list)
    sources: dict[tuple[str, int], None] = field(default_factory=dict)  # (client, version started from), in arrival order
    metrics: list[dict[str, float]] = field(default_factory=list)  # each buffered update's numbers (never text)

    @property
    def version(self) -> int:
        return self.server.version

    @property
    def buffered(self) -> int:
        return len(self.weights)


@dataclass(frozen=True)
class Aggregation:
    """What one server step took in: per buffered update, in arrival order."""

    version: int  # the global version it made
    clients: tuple[str, ...]
    staleness: tuple[int, ...]
    weights: tuple[float, ...]  # client weights (without the staleness factor)
    metrics: tuple[dict[str, float], ...]
    released_norm: float  # L2 norm of the aggregate delta the server optimizer took


def new_buffer(server: ServerState, pipeline: Pipeline, policy: BufferPolicy) -> BufferedState:
    """An empty buffer over `server`; refuses a pipeline the buffer cannot run (see policy_settings)."""
    if pipeline.privacy is not None:
        raise ValueError("a FedBuff buffer cannot run differential privacy: asynchronous DP accounting is not implemented")
    if pipeline.mask is not None:
        raise ValueError("a FedBuff buffer cannot run secure aggregation: it weighs each update on its own")
    if pipeline.needs_stack:
        raise ValueError(f"a FedBuff buffer folds updates into a sum; the {pipeline.aggregator.name} aggregator needs rows")
    size = server.global_vector.shape[0]
    return BufferedState(server, pipeline, policy, np.zeros(size, np.float32), np.empty(size, np.float32))


def check_stale(state: BufferedState, update: Update) -> int:
    """The update's staleness; raises StaleUpdate or UpdateRejected (saying why) unless it may be buffered.

    Past the staleness checks, an update goes through the synchronous round's own content checks
    (fedlm.server.rounds.check_contents: dtype and shape, finite values, sample count, magnitude,
    metrics).
    """
    who, started = update.client_id, update.version
    if isinstance(started, bool) or not isinstance(started, INTEGERS) or started < 0:
        raise UpdateRejected(f"update from {who} names version {started!r}; expected an integer >= 0")
    started = int(started)
    version = state.server.version
    staleness = version - started
    if staleness < 0:
        raise StaleUpdate(f"update from {who} started from version {started}, which the server (at version "
                          f"{version}) has not made")
    if staleness > state.policy.max_staleness:
        raise StaleUpdate(f"update from {who} started from version {started}, {staleness} versions behind the server's "
                          f"{version}: past policy.max_staleness = {state.policy.max_staleness}")
    if (who, started) in state.sources:
        raise UpdateRejected(f"the buffer already holds an update from {who} started from version {started}")
    check_contents(update, state.pipeline, state.total.shape, state.server.clip_norm)  # reads, changes nothing
    return staleness


def accept_stale(state: BufferedState, update: Update) -> Aggregation | None:
    """Check an update and fold it into the buffer; when the buffer holds K, step the global (returned)."""
    staleness = check_stale(state, update)
    pipeline = state.pipeline
    weight = client_weight(update.num_samples, pipeline.weighting, pipeline.max_weight)
    vector = apply_ingress(pipeline, update.vector, state.scratch)
    fold(state.total, vector, weight * state.policy.weights_by_staleness[staleness])
    weights = state.weights
    weights.append(weight)
    state.staleness.append(staleness)
    state.sources[(update.client_id, state.server.version - staleness)] = None  # a replay of the same pair is refused
    state.metrics.append(releasable_for(update.metrics, pipeline.privacy))
    if len(weights) < state.policy.buffer_size:
        return None
    return step_global(state)


def step_global(state: BufferedState) -> Aggregation:
    """Aggregate the buffered updates into the next global version and empty the buffer."""
    if not state.weights:
        raise ValueError("the buffer is empty: there is nothing to aggregate")
    server, pipeline = state.server, state.pipeline
    weights = np.array(state.weights, dtype=np.float64)
    delta = aggregate(pipeline, server.global_vector, state.total, None, weights, server.clip_norm)
    new_global, opt_state = optimize(pipeline, server.opt_state, server.global_vector, delta)
    state.server = ServerState(server.version + 1, new_global, server.rounds_done + 1, opt_state, server.clip_norm,
                               server.ledger)
    outcome = Aggregation(
        version=state.server.version, clients=tuple(map(itemgetter(0), state.sources)), staleness=tuple(state.staleness),
        weights=tuple(state.weights), metrics=tuple(state.metrics),
        released_norm=math.sqrt(float(np.dot(delta, delta))),  # one BLAS pass, no float64 copy of the delta
    )
    state.total.fill(0.0)
    state.weights, state.staleness, state.sources, state.metrics = [], [], {}, []
    return outcome
