"""The update pipeline: the chain of transforms from a client's delta to the new global.

    client:  clip -> [noise share] -> [quantize] -> [mask]          (encode one update)
    server:  [norm bound] => aggregate (fold into a sum, or robust over the stack)
             -> [unmask] -> [dequantize] -> [central noise] -> mean -> server optimizer

After TensorFlow Federated's composable aggregators (`distributed_dp`: rotate, clip,
discretize, noise, modular clip, secure sum). Each step declares where it runs and
whether it commutes with summation; `check_chain` refuses, when the chain is built, any
order or combination that cannot work, with a message naming both steps: a step that
must see single updates together with secure aggregation (the server only ever sees a
sum), noise before clipping (it breaks the sensitivity argument), and so on. Steps in
brackets arrive with the privacy, secure-aggregation and compression issues; they slot
in by declaring their stage.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from fedlm.aggregation.mean import WEIGHTINGS
from fedlm.aggregation.server_opt import ServerOptimizer
from fedlm.core.vectors import Spec
from fedlm.privacy.plan import PrivacyPlan


class PipelineError(ValueError):
    """A chain of update transforms that cannot work, naming the two parts that clash."""


class Stage(enum.IntEnum):
    """Canonical order of the chain; a step may only follow steps of a lower stage."""

    CLIP = 10  # client: bound each update's L2 norm
    NOISE_SHARE = 20  # client: distributed DP noise share
    SPARSIFY = 25  # client: keep a share of the coordinates
    QUANTIZE = 30  # client: to few bits for transport (optionally rotated first)
    MASK = 40  # client: secure-aggregation mask
    INGRESS = 50  # server, per update before aggregation (norm bound)
    AGGREGATE = 60  # server: sum/mean or a robust statistic
    UNMASK = 70
    DEQUANTIZE = 80
    CENTRAL_NOISE = 90
    OPTIMIZE = 100  # server optimizer on the mean


CLIENT_STAGES = {Stage.CLIP, Stage.NOISE_SHARE, Stage.SPARSIFY, Stage.QUANTIZE, Stage.MASK}
# The quantizer on the cohort's shared grid (updates.dp_quantize): its rounding never leaves the clip norm
SHARED_QUANTIZE = "shared_quantize"
CORRELATED_NOISE = "correlated_noise"  # banded MF-DP-FTRL: the round's share of noise correlated across rounds (server state)


@dataclass(frozen=True)
class Step:
    """One transform of the chain, described by what the checks need to know of it."""

    name: str
    stage: Stage
    summable: bool = True  # commutes with summation: fine under secure aggregation
    params: tuple[tuple[str, float], ...] = ()

    @property
    def on_client(self) -> bool:
        return self.stage in CLIENT_STAGES

    def param(self, key: str) -> float:
        return dict(self.params)[key]


@dataclass(frozen=True)
class Pipeline:
    """A checked chain. `aggregator` is the AGGREGATE step; `optimizer` the server update."""

    steps: tuple[Step, ...]
    optimizer: ServerOptimizer
    weighting: str = "samples"
    spec: Spec | None = None  # the update's layout; the svd aggregator needs it to find LoRA pairs
    privacy: PrivacyPlan | None = None  # user-level DP: the round's event, budget, adaptive clipping
    max_weight: float = 0.0  # samples weighting: a client's weight is min(its samples, this); 0 = no cap

    @property
    def client_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.on_client)

    @property
    def ingress_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.stage == Stage.INGRESS)

    @property
    def aggregator(self) -> Step:
        return next(s for s in self.steps if s.stage == Stage.AGGREGATE)

    @property
    def mask(self) -> Step | None:
        """The secure-aggregation step, when the server may see only the cohort's sum."""
        return next((s for s in self.steps if s.stage == Stage.MASK), None)

    @property
    def needs_stack(self) -> bool:
        """True when the server must hold every update of the round (it says so in the run log)."""
        return not self.aggregator.summable

    def describe(self) -> str:
        return " -> ".join(s.name for s in self.steps) + f" -> {self.optimizer.name}"


def check_chain(steps: tuple[Step, ...], optimizer: ServerOptimizer) -> None:
    """Raise PipelineError, naming both parts, for any order or combination that cannot work."""
    aggregators = [s for s in steps if s.stage == Stage.AGGREGATE]
    if len(aggregators) > 1:
        raise PipelineError(f"{aggregators[0].name} and {aggregators[1].name} are both aggregators; choose one")
    if not aggregators:
        raise PipelineError("a pipeline needs an aggregate step (mean or a robust aggregator)")
    for earlier, later in zip(steps, steps[1:]):
        if later.stage < earlier.stage:
            raise PipelineError(f"{later.name} cannot come after {earlier.name}: {later.name} must run first")
        if later.stage == earlier.stage and later.stage != Stage.INGRESS:
            raise PipelineError(f"{earlier.name} and {later.name} both take the {later.stage.name.lower()} stage")
    _check_secure_sum(steps)
    _check_noise_follows_clip(steps)
    aggregator = aggregators[0]
    if aggregator.name == "lora_svd" and (optimizer.name != "sgd" or optimizer.momentum):
        raise PipelineError(
            f"lora.aggregation = 'svd' cannot be used with server optimizer {optimizer.name!r}"
            f"{' with momentum' if optimizer.momentum else ''}: svd refactors B.A every round, so the"
            " factors' moments carry over meaninglessly; use strategy.server_optimizer = 'sgd' without momentum"
        )


def _check_secure_sum(steps: tuple[Step, ...]) -> None:
    mask = next((s for s in steps if s.stage == Stage.MASK), None)
    if mask is None:
        return
    for step in steps:
        if not step.summable:
            raise PipelineError(
                f"{step.name} needs to see individual updates, but {mask.name} (secure aggregation) "
                "lets the server see only their sum; turn one of them off"
            )


def _check_noise_follows_clip(steps: tuple[Step, ...]) -> None:
    """Gaussian noise is calibrated to the clip norm: it needs a clip before it, a sum after it,
    and nothing in between that can raise an update's norm past the clip (sparsifying rescales
    kept values, stochastic rounding can round up, error feedback adds old residuals). The one
    quantizer allowed is the shared grid's, whose rounding never leaves the clip norm, and only
    with central noise: a client's noise share would be rounded with its update (dp_quantize)."""
    noise = [s for s in steps if s.stage in (Stage.NOISE_SHARE, Stage.CENTRAL_NOISE)]
    clip = next((s for s in steps if s.stage == Stage.CLIP), None)
    for n in noise:
        if clip is None:
            raise PipelineError(f"{n.name} needs a clip step before it: noise is calibrated to the clipped norm")
        for other in steps:
            if other.name == SHARED_QUANTIZE and n.stage == Stage.NOISE_SHARE:
                raise PipelineError(
                    f"{other.name} cannot be combined with {n.name}: the noise share would be rounded with the"
                    " update, so the sum would no longer carry the Gaussian noise the accounting counts"
                )
            if other.stage == Stage.SPARSIFY or (other.stage == Stage.QUANTIZE and other.name != SHARED_QUANTIZE):
                raise PipelineError(
                    f"{other.name} cannot be combined with {n.name}: it can raise an update's norm past the clip"
                    " norm the noise is calibrated to; turn compression off with differential privacy, or quantize"
                    " on the cohort's shared grid (compression.scale = 'shared')"
                )
            if other.stage == Stage.INGRESS:
                raise PipelineError(
                    f"{other.name} cannot be combined with {n.name}: it rescales single updates, noise shares"
                    " included, which would shrink the noise the privacy accounting counts on"
                )
            if other.stage == Stage.AGGREGATE and not other.summable:
                raise PipelineError(
                    f"{other.name} cannot be combined with {n.name}: Gaussian noise protects a sum of clipped"
                    f" updates, and {other.name} is not a sum; use strategy.aggregator = 'mean'"
                )


def make_pipeline(
    steps: tuple[Step, ...],
    optimizer: ServerOptimizer,
    *,
    weighting: str = "samples",
    spec: Spec | None = None,
    privacy: PrivacyPlan | None = None,
    max_weight: float = 0.0,
) -> Pipeline:
    """A checked pipeline; raises PipelineError naming the clashing parts."""
    if weighting not in WEIGHTINGS:
        raise PipelineError(f"unknown weighting {weighting!r}; known: {WEIGHTINGS}")
    if not (max_weight >= 0 and math.isfinite(max_weight)):
        raise PipelineError(f"the client weight cap must be a finite number >= 0 (0 = no cap), not {max_weight!r}")
    check_chain(steps, optimizer)
    if any(s.stage == Stage.MASK for s in steps) and weighting != "uniform":
        raise PipelineError(f"secure aggregation needs uniform weighting, not {weighting!r}: "
                            "the server cannot weight updates it never sees")
    if privacy is not None and weighting != "uniform":
        raise PipelineError(f"differential privacy needs uniform weighting, not {weighting!r}: "
                            "a sample-weighted sum has no fixed sensitivity")
    if any(s.name == "lora_svd" for s in steps) and spec is None:
        raise PipelineError("the lora_svd aggregator needs the update's spec")
    return Pipeline(steps, optimizer, weighting, spec, privacy, max_weight if weighting == "samples" else 0.0)


def fedavg_pipeline(*, server_lr: float = 1.0, weighting: str = "samples") -> Pipeline:
    """Plain FedAvg: the weighted mean of the deltas, then global += server_lr * mean."""
    return make_pipeline((Step("mean", Stage.AGGREGATE),), ServerOptimizer("sgd", lr=server_lr), weighting=weighting)
