"""A simulated round under secure aggregation: clients train inside the protocol's masking stage.

Keys are advertised and shared before anyone trains; each client then trains, runs its
client steps (clip, noise share), encodes its update to integers and masks it, and the
server folds the masked vector at once. The round engine receives only the unmasked sum
(rounds.accept_sum), exactly what a SecAgg server learns. A round whose sum cannot be
recovered is abandoned: nothing is released and the global stays as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fedlm.core.rng import make_rng
from fedlm.core.types import Task, Update
from fedlm.secagg.messages import RoundFailed
from fedlm.secagg.session import SecureSum, StageClock, make_server, run_round
from fedlm.server.rounds import OpenRound, accept_sum, make_tasks
from fedlm.updates import wire
from fedlm.updates.pipeline import Pipeline, Stage

# How far past the clip norm a noised coordinate may reach before the encoding clips it:
# 8 standard deviations of a client's noise share (a chance of 1e-15 per coordinate).
NOISE_MARGIN_STDS = 8.0

# metrics that describe a single update: a client under secure aggregation keeps them
PER_UPDATE_METRICS = ("update_norm", "unclipped")

# trains one client: (task, out) -> its update, whose vector is `out` (float32, encoded client-side)
ClientTurn = Callable[[Task, np.ndarray], Update]


def value_bound(pipeline: Pipeline, clip_norm: float) -> float:
    """A bound on every coordinate of a client's input: the clip norm plus room for its noise share."""
    share = next((s for s in pipeline.client_steps if s.stage == Stage.NOISE_SHARE), None)
    if share is None:
        return clip_norm
    std = share.param("noise_multiplier") * clip_norm / math.sqrt(share.param("expected_cohort"))
    return clip_norm + NOISE_MARGIN_STDS * std


def secure_round(rnd: OpenRound, size: int, seed: int, turn: ClientTurn, clock: StageClock | None = None) -> SecureSum | None:
    """Run the cohort through SecAgg+ and fold the recovered sum into `rnd`; None when the round failed."""
    mask = rnd.pipeline.mask
    if mask is None:
        raise ValueError("this pipeline has no secure-aggregation step")
    server = make_server(
        rnd.round, rnd.cohort, size=size, neighbours=int(mask.param("neighbours")), threshold=mask.param("threshold"),
        bound=value_bound(rnd.pipeline, rnd.clip_norm), rng=make_rng(seed, "secagg-graph", rnd.round),
    )
    tasks = {t.client_id: t for t in make_tasks(rnd)}
    metrics: dict[str, dict[str, float]] = {}

    def source(client: str, out: np.ndarray) -> bool:
        update = turn(tasks[client], out)
        # the server may see the loss, not the norm of an update it must never see alone
        kept = {k: v for k, v in update.metrics.items() if k not in PER_UPDATE_METRICS}
        metrics[client] = dict(kept, bytes_up=float(wire.dense_bytes(size)))  # masked: dense uint32
        return True

    try:
        result = run_round(server, source, lambda c: make_rng(seed, "secagg-rounding", rnd.round, c), clock=clock)
    except RoundFailed:
        return None
    accept_sum(rnd, result.total, result.survivors, {c: metrics[c] for c in result.survivors})
    return result
