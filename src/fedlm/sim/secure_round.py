"""A simulated round under secure aggregation: clients train inside the protocol's masking stage.

Keys are advertised and shared before anyone trains; each client then trains, runs its
client steps (clip, noise share), encodes its update to integers and masks it, and the
server folds the masked vector at once. The round engine receives only the unmasked sum
(rounds.accept_sum), exactly what a SecAgg server learns. A round whose sum cannot be
recovered is abandoned: nothing is released and the global stays as it was. The clients
sign their adverts and their confirmations of the survivor sets with Ed25519 keys from a
directory made fresh for the round (secagg.session), the simulation's stand-in for the
service's certificates.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedlm.core.rng import make_rng
from fedlm.core.types import Task, Update
from fedlm.secagg.inputs import PER_UPDATE_METRICS, round_server
from fedlm.secagg.messages import RoundFailed
from fedlm.secagg.session import SecureSum, StageClock, run_round
from fedlm.server.rounds import OpenRound, accept_sum, make_tasks
from fedlm.updates import wire

# trains one client: (task, out) -> its update, whose vector is `out` (float32, encoded client-side)
ClientTurn = Callable[[Task, np.ndarray], Update]


def secure_round(rnd: OpenRound, size: int, seed: int, turn: ClientTurn, clock: StageClock | None = None) -> SecureSum | None:
    """Run the cohort through SecAgg+ and fold the recovered sum into `rnd`; None when the round failed."""
    if rnd.pipeline.mask is None:
        raise ValueError("this pipeline has no secure-aggregation step")
    if len(rnd.cohort) < 2:
        return None  # a Poisson cohort of one (or none): no sum to hide an update in, so nothing is released
    server = round_server(rnd.pipeline, rnd.round, rnd.cohort, size=size, clip_norm=rnd.clip_norm, seed=seed)
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
