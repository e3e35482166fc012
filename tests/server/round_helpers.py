"""What the round-engine tests share: a tiny global, two clients' deltas, update builders and a round snapshot."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from fedlm.core.types import Update
from fedlm.server.rounds import OpenRound

GLOBAL = np.array([1, 1, 1], np.float32)
DELTA_A = np.array([1, 2, 3], np.float32)  # from client "a", 1 sample
DELTA_B = np.array([3, 6, 9], np.float32)  # from client "b", 3 samples


def _f32(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


def _update(rnd: OpenRound, client: str, vector: np.ndarray, num_samples: int = 1, **changes) -> Update:
    update = Update(round=rnd.round, version=rnd.version, client_id=client, num_samples=num_samples, vector=vector)
    return dataclasses.replace(update, **changes)


def _snapshot(rnd: OpenRound) -> tuple:
    """Everything an update could change, as plain values."""
    return (
        rnd.round,
        rnd.version,
        rnd.cohort,
        rnd.pipeline,
        rnd.total.tobytes(),
        rnd.scratch.tobytes(),
        dict(rnd.weights),
        set(rnd.failed),
        copy.deepcopy(rnd.metrics),
    )
