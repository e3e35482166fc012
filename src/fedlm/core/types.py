"""The messages of one round: what the coordinator asks of a client and what comes back.

Every task and update names the global version it started from, so that asynchronous
aggregation can later weigh stale updates instead of guessing their age.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Task:
    """Train on your data, starting from global `version`, during round `round`."""

    round: int
    version: int
    client_id: str
    clip_norm: float = 0.0  # the round's L2 clip norm (it moves under adaptive clipping); 0 = none


# The names of the numbers a client may report with its update (client.train and updates.client make
# them). The service refuses any other name: a free-form key would let text onto the server.
CLIENT_METRICS = ("train_loss", "last_loss", "steps", "tokens", "update_norm", "unclipped", "bytes_up", "redacted")


@dataclass(frozen=True)
class Update:
    """A client's answer to a task: the delta of its shared parameters and how many samples made it.

    `vector` holds update contents; it never reaches a log or the store in the clear.
    `metrics` holds numbers only (losses, counts), never text.
    """

    round: int
    version: int
    client_id: str
    num_samples: int
    vector: np.ndarray = field(repr=False)
    metrics: Mapping[str, float] = field(default_factory=dict)
