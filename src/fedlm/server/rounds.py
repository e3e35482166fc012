"""The round engine: open a round, accept updates, close it into a new global version.

Pure: no I/O, no clock, no randomness of its own (the caller passes the cohort). The
in-process simulation drives it now and the network service will drive the same
functions. State is explicit: a frozen `ServerState` between rounds, and an `OpenRound`
whose accumulator is folded in place as updates arrive. Every check on an update runs
before anything changes, so a rejected update leaves the round byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from fedlm.aggregation.mean import client_weight, fold, largest_share
from fedlm.core.types import Task, Update
from fedlm.privacy.adaptive_clip import next_clip_norm
from fedlm.privacy.correlated_noise import round_noise
from fedlm.privacy.ledger import PrivacyLedger
from fedlm.privacy.release import releasable_for
from fedlm.privacy.round_snr import james_stein_factor, noise_std_on_mean, round_signal_to_noise
from fedlm.updates.pipeline import Pipeline, Stage, fedavg_pipeline
from fedlm.updates.server import aggregate, apply_ingress, initial_optimizer_state, optimize


# A weighted update's L2 norm (which bounds every coordinate) may not exceed this: float32
# tops out at 3.4e38, so this leaves room to sum a hundred million such updates.
MAX_WEIGHTED_MAGNITUDE = 1e30
# float32 rounding of a clipped update's norm stays well inside this factor of the clip norm.
CLIP_TOLERANCE = 1.0 + 1e-4
# More samples than any client holds; bounds the weight so it is always a finite float32.
MAX_SAMPLES = 2**31 - 1
# A client holding more than this share of a round's weight (among 3 or more) is warned about.
DOMINANT_SHARE = 0.5


INTEGERS = (int, np.integer)  # built once: `int | np.integer` in isinstance builds a union on every call
NUMBERS = (int, float, np.integer, np.floating)


class UpdateRejected(ValueError):
    """An update that does not belong to the open round, or is malformed."""


@dataclass(frozen=True)
class ServerState:
    """The coordinator between rounds: the global shared vector and its version."""

    version: int
    global_vector: np.ndarray = field(repr=False)
    rounds_done: int = 0
    opt_state: tuple[np.ndarray, ...] = field(default=(), repr=False)  # the server optimizer's moments
    clip_norm: float = 0.0  # the L2 clip norm clients apply (adaptive clipping moves it)
    ledger: PrivacyLedger = field(default_factory=PrivacyLedger)  # every DP event so far
    noise_state: tuple[np.ndarray, ...] = field(default=(), repr=False)  # banded MF-DP-FTRL: the last b - 1 noise vectors


@dataclass
class OpenRound:
    """One round in progress. `total` is the weighted sum of accepted updates."""

    round: int
    version: int
    cohort: tuple[str, ...]
    pipeline: Pipeline
    total: np.ndarray = field(repr=False)
    scratch: np.ndarray = field(repr=False)
    stack: np.ndarray | None = field(default=None, repr=False)  # [cohort, P], only for aggregators that need it
    clip_norm: float = 0.0
    unclipped: int = 0  # adaptive clipping: how many accepted updates went unclipped
    weights: dict[str, float] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    members: frozenset[str] = field(default=frozenset(), repr=False)  # the cohort as a set: O(1) membership checks

    def __post_init__(self) -> None:
        if not self.members:
            self.members = frozenset(self.cohort)


@dataclass(frozen=True)
class RoundOutcome:
    round: int
    version: int  # the global version after the round
    accepted: tuple[str, ...]
    failed: tuple[str, ...]
    committed: bool  # False when no update arrived: the global is unchanged
    released_norm: float | None = None  # L2 norm of the round's aggregate (under DP: the noised mean, releasable)
    shrink: float | None = None  # privacy.noise_aware_lr: the factor the noised mean was scaled by


def initial_state(global_vector: np.ndarray, pipeline: Pipeline | None = None) -> ServerState:
    if global_vector.dtype != np.float32 or global_vector.ndim != 1:
        raise ValueError("the global vector must be 1-D float32")
    pipeline = pipeline or fedavg_pipeline()
    opt_state = initial_optimizer_state(pipeline, global_vector.size)
    clip = next((s.param("clip_norm") for s in pipeline.client_steps if s.name == "clip"), 0.0)
    return ServerState(version=0, global_vector=global_vector.copy(), opt_state=opt_state, clip_norm=clip)


def open_round(state: ServerState, cohort: tuple[str, ...], pipeline: Pipeline | None = None) -> OpenRound:
    """Allocate the round's accumulator (and, for robust aggregators, a row per cohort client).

    Without a pipeline the round is plain FedAvg (weighted mean, server learning rate 1).
    """
    pipeline = pipeline or fedavg_pipeline()
    if len(set(cohort)) != len(cohort):
        raise ValueError("cohort has duplicate clients")
    size = state.global_vector.shape[0]
    stack = np.empty((len(cohort), size), np.float32) if pipeline.needs_stack else None
    return OpenRound(
        round=state.rounds_done + 1,
        version=state.version,
        cohort=tuple(cohort),
        pipeline=pipeline,
        total=np.zeros(size, np.float32),
        scratch=np.empty(size, np.float32),
        stack=stack,
        clip_norm=state.clip_norm,
    )


def make_tasks(rnd: OpenRound) -> list[Task]:
    return [Task(round=rnd.round, version=rnd.version, client_id=c, clip_norm=rnd.clip_norm) for c in rnd.cohort]


def check_update(rnd: OpenRound, update: Update) -> None:
    """Raise UpdateRejected, saying why, unless `update` may be folded into `rnd`."""
    who = update.client_id
    if update.round != rnd.round:
        raise UpdateRejected(f"update from {who} is for round {update.round}, the open round is {rnd.round}")
    if update.version != rnd.version:
        raise UpdateRejected(f"update from {who} started from version {update.version}, the round serves {rnd.version}")
    if who not in rnd.members:
        raise UpdateRejected(f"client {who} is not in round {rnd.round}'s cohort")
    if who in rnd.weights or who in rnd.failed:
        raise UpdateRejected(f"client {who} already answered round {rnd.round}")
    check_contents(update, rnd.pipeline, rnd.total.shape, rnd.clip_norm)


def check_contents(update: Update, pipeline: Pipeline, shape: tuple[int, ...], clip_norm: float) -> None:
    """Raise UpdateRejected unless the update's vector, sample count and metrics may be folded (whatever its round)."""
    who = update.client_id
    vector = update.vector
    if not isinstance(vector, np.ndarray) or vector.dtype != np.float32 or vector.shape != shape:
        raise UpdateRejected(f"update from {who} must be float32 of shape {shape}")
    samples = update.num_samples
    if isinstance(samples, bool) or not isinstance(samples, INTEGERS) or not 1 <= samples <= MAX_SAMPLES:
        raise UpdateRejected(f"update from {who} reports {samples!r} samples; expected an integer in [1, {MAX_SAMPLES}]")
    # One BLAS pass: a NaN or infinity anywhere makes the squared norm non-finite, and so
    # does a value past 1.8e19, which the magnitude bound refuses anyway.
    with np.errstate(over="ignore", invalid="ignore"):
        squared = float(np.dot(vector, vector))
    if not np.isfinite(squared):
        raise UpdateRejected(f"update from {who} has non-finite values or is too large (its norm overflows float32)")
    weight = client_weight(update.num_samples, pipeline.weighting, pipeline.max_weight)
    norm = squared**0.5
    if enforces_clip(pipeline) and norm > clip_norm * CLIP_TOLERANCE:
        raise UpdateRejected(f"update from {who} has norm {norm:.6g}, past the clip norm {clip_norm:.6g} "
                             "that central DP's noise is calibrated to")
    if weight * norm > MAX_WEIGHTED_MAGNITUDE:
        raise UpdateRejected(f"update from {who} is too large: weight {weight:.3g} x norm {norm:.3g}")
    bad = [k for k, v in update.metrics.items() if not isinstance(k, str) or not _is_finite_number(v)]
    if bad:
        raise UpdateRejected(f"update from {who} has metrics that are not finite numbers: {bad[:3]}")
    if is_adaptive(pipeline) and update.metrics.get("unclipped") not in (0, 1):
        raise UpdateRejected(f"update from {who} lacks the 0/1 'unclipped' bit that adaptive clipping counts")


def _is_finite_number(value: object) -> bool:
    return isinstance(value, NUMBERS) and not isinstance(value, bool) and np.isfinite(value)


def enforces_clip(pipeline: Pipeline) -> bool:
    """Central DP: the server sees each clipped update, so it can hold clients to the clip norm."""
    return pipeline.privacy is not None and pipeline.privacy.placement == "central"


def is_adaptive(pipeline: Pipeline) -> bool:
    return pipeline.privacy is not None and pipeline.privacy.adaptive_clip


def accept_update(rnd: OpenRound, update: Update) -> None:
    """Check an update, run the per-update server steps, and fold it in (or keep its row)."""
    check_update(rnd, update)
    weight = client_weight(update.num_samples, rnd.pipeline.weighting, rnd.pipeline.max_weight)
    vector = apply_ingress(rnd.pipeline, update.vector, rnd.scratch)
    if rnd.stack is not None:
        rnd.stack[len(rnd.weights)] = vector
    else:
        fold(rnd.total, vector, weight)
    rnd.weights[update.client_id] = weight
    rnd.metrics[update.client_id] = releasable_for(update.metrics, rnd.pipeline.privacy)  # under DP: data-free only
    if is_adaptive(rnd.pipeline):
        rnd.unclipped += int(update.metrics["unclipped"])


def accept_sum(rnd: OpenRound, total: np.ndarray, clients: tuple[str, ...], metrics: dict[str, dict[str, float]]) -> None:
    """Fold the sum of several clients' updates, as secure aggregation releases it (uniform weights).

    The same checks as for one update, on the sum: every client in the cohort and not yet
    answered, the shape, finite values, and finite metrics.
    """
    if rnd.pipeline.mask is None or rnd.pipeline.weighting != "uniform":
        raise UpdateRejected("a sum of updates needs a secure-aggregation pipeline with uniform weighting")
    if not clients or len(set(clients)) != len(clients):
        raise UpdateRejected("a sum of updates must name its distinct contributors")
    for who in clients:
        if who not in rnd.members:
            raise UpdateRejected(f"client {who} is not in round {rnd.round}'s cohort")
        if who in rnd.weights or who in rnd.failed:
            raise UpdateRejected(f"client {who} already answered round {rnd.round}")
        bad = [k for k, v in metrics.get(who, {}).items() if not isinstance(k, str) or not _is_finite_number(v)]
        if bad:
            raise UpdateRejected(f"update from {who} has metrics that are not finite numbers: {bad[:3]}")
    if not isinstance(total, np.ndarray) or total.dtype != np.float32 or total.shape != rnd.total.shape:
        raise UpdateRejected(f"the sum must be float32 of shape {rnd.total.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.isfinite(float(np.dot(total, total))):
            raise UpdateRejected("the sum has non-finite values or is too large")
    fold(rnd.total, total, 1.0)
    for who in clients:
        rnd.weights[who] = 1.0
        rnd.metrics[who] = releasable_for(metrics.get(who, {}), rnd.pipeline.privacy)


def abandon_round(state: ServerState, rnd: OpenRound) -> tuple[ServerState, RoundOutcome]:
    """End a round that released nothing (secure aggregation could not recover the sum).

    The global, its version, the optimizer and the privacy ledger stay as they were.
    """
    if rnd.round != state.rounds_done + 1 or rnd.version != state.version:
        raise ValueError(f"round {rnd.round} does not follow the server state (round {state.rounds_done}, v{state.version})")
    failed = tuple(sorted(rnd.cohort))
    return replace(state, rounds_done=rnd.round), RoundOutcome(rnd.round, state.version, (), failed, committed=False)


def weight_share(rnd: OpenRound) -> float:
    """The largest share of the round's total weight one accepted client holds (0 with none)."""
    return largest_share(rnd.weights)[1]


def clipped_share(rnd: OpenRound) -> float | None:
    """The share of the round's reported updates that the client-side clip shortened (from each client's `unclipped`
    bit); None without clipping, and under DP, where the bits are not published un-noised."""
    if rnd.pipeline.privacy is not None:
        return None
    bits = [m["unclipped"] for m in rnd.metrics.values() if "unclipped" in m]
    return (len(bits) - sum(bits)) / len(bits) if bits else None


def round_noise_std(rnd: OpenRound, arrived: int) -> float | None:
    """The per-coordinate noise std on the round's released mean (fedlm.privacy.round_snr); None without DP noise."""
    plan = rnd.pipeline.privacy
    noise = [step for step in rnd.pipeline.steps if step.stage in (Stage.CENTRAL_NOISE, Stage.NOISE_SHARE)]
    if plan is None or not noise:
        return None
    z = noise[0].param("noise_multiplier") * plan.round_noise_gain(rnd.round)
    return noise_std_on_mean(plan, z, rnd.clip_norm, arrived)


def signal_to_noise(rnd: OpenRound, outcome: RoundOutcome) -> dict[str, float | None]:
    """Under DP, the round's expected noise norm on the mean, its measured signal-to-noise ratio
    (fedlm.privacy.round_snr) and, with privacy.noise_aware_lr, the factor the step was scaled by;
    {} without DP or when nothing was released."""
    std = round_noise_std(rnd, len(outcome.accepted))
    if std is None or outcome.released_norm is None:
        return {}
    fields = round_signal_to_noise(outcome.released_norm, std, rnd.total.size)
    if outcome.shrink is not None:
        fields["server_lr_scale"] = outcome.shrink
    return fields


def dominance_warning(rnd: OpenRound) -> str | None:
    """A sentence when sample-count weighting lets one client hold most of the round, else None.

    With three or more accepted updates, more than half the weight in one client means the
    average is mostly that client's update; the sentence says how to bound it.
    """
    if rnd.pipeline.weighting != "samples" or len(rnd.weights) < 3:
        return None
    who, share = largest_share(rnd.weights)
    if share <= DOMINANT_SHARE:
        return None
    cap = f"capped at {rnd.pipeline.max_weight:g}" if rnd.pipeline.max_weight > 0 else "uncapped"
    return (f"round {rnd.round}: client {who} holds {share:.0%} of the round's weight ({rnd.weights[who]:g} samples, "
            f"{cap}) among {len(rnd.weights)} updates; bound it with strategy.max_client_weight "
            "or use strategy.weighting = 'uniform'")


def mark_failed(rnd: OpenRound, client_id: str) -> None:
    if client_id not in rnd.members or client_id in rnd.weights:
        raise ValueError(f"client {client_id} cannot fail in round {rnd.round}")
    rnd.failed.add(client_id)


def is_complete(rnd: OpenRound) -> bool:
    return len(rnd.weights) + len(rnd.failed) == len(rnd.cohort)


def close_round(state: ServerState, rnd: OpenRound) -> tuple[ServerState, RoundOutcome]:
    """Aggregate what arrived into the next global version.

    Without DP a round with no arrivals leaves the global unchanged. With DP every round
    releases its noised mean, even of nothing: whether anything is released must not
    depend on who was sampled. Each DP round adds its event to the ledger.
    """
    if rnd.round != state.rounds_done + 1 or rnd.version != state.version:
        raise ValueError(f"round {rnd.round} does not follow the server state (round {state.rounds_done}, v{state.version})")
    accepted = tuple(sorted(rnd.weights))
    failed = tuple(sorted(rnd.failed))
    plan = rnd.pipeline.privacy
    ledger = state.ledger if plan is None else plan.charge(state.ledger, rnd.round, arrived=len(accepted))
    clip_norm = state.clip_norm
    if plan is not None and plan.adaptive_clip:
        clip_norm, _ = next_clip_norm(
            state.clip_norm, rnd.unclipped, arrived=len(accepted), expected_cohort=plan.expected_cohort, target_quantile=plan.target_quantile,
            lr=plan.clip_lr, count_std=plan.count_noise,
        )
    if not accepted and plan is None:
        new_state = replace(state, rounds_done=rnd.round)
        return new_state, RoundOutcome(rnd.round, state.version, accepted, failed, committed=False)
    weights = np.fromiter(rnd.weights.values(), dtype=np.float64, count=len(rnd.weights))
    rows = rnd.stack[: len(weights)] if rnd.stack is not None else None
    correlated, noise_state = None, state.noise_state
    if plan is not None and plan.correlated:  # banded MF-DP-FTRL: this round's share of the correlated noise
        std = plan.sum_noise_multiplier * rnd.clip_norm
        correlated, noise_state = round_noise(plan.coefficients, state.noise_state, rnd.total.size, std)
    aggregate_delta = aggregate(rnd.pipeline, state.global_vector, rnd.total, rows, weights, rnd.clip_norm, correlated)
    released = float(np.linalg.norm(aggregate_delta))  # a dot product in place: no copy of the vector
    shrink = None
    if plan is not None and plan.noise_aware_lr:  # post-processing of the noised mean: no privacy cost
        shrink = james_stein_factor(released, round_noise_std(rnd, len(accepted)) or 0.0, aggregate_delta.size)
        aggregate_delta = aggregate_delta * np.float32(shrink)
    new_global, opt_state = optimize(rnd.pipeline, state.opt_state, state.global_vector, aggregate_delta)
    new_state = ServerState(state.version + 1, new_global, rnd.round, opt_state, clip_norm, ledger, noise_state)
    return new_state, RoundOutcome(rnd.round, new_state.version, accepted, failed, committed=True, released_norm=released,
                                   shrink=shrink)
