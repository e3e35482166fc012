"""What the monitor keeps of one round's updates as they arrive: each one's exact norm and its sketch.

The simulation and the service fold every update into the round's accumulator and keep no
copy of it; the watch keeps [cohort] norms and [cohort, width] sketches (8 KiB a client), so
that at the round's close each client's norm and its cosine to the others can be judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedlm.monitoring.sketch import Sketcher, sketch_into


@dataclass
class RoundWatch:
    """One round's observed updates, in arrival order."""

    sketcher: Sketcher = field(repr=False)
    norms: np.ndarray = field(repr=False)  # float64 [cohort]
    sketches: np.ndarray = field(repr=False)  # float32 [cohort, width]
    clients: list[str] = field(default_factory=list)


def open_watch(sketcher: Sketcher, cohort_size: int) -> RoundWatch:
    return RoundWatch(sketcher, np.zeros(cohort_size), np.zeros((cohort_size, sketcher.width), np.float32))


def observe(watch: RoundWatch, client_id: str, vector: np.ndarray) -> None:
    """Note an accepted update's norm and sketch; refused (state unchanged) past the cohort or for a client seen."""
    index = len(watch.clients)
    if index >= len(watch.norms):
        raise ValueError(f"the round's watch holds {len(watch.norms)} updates; {client_id} would be one more")
    if client_id in watch.clients:
        raise ValueError(f"client {client_id} was already observed this round")
    sketch_into(watch.sketcher, vector, watch.sketches[index])
    watch.norms[index] = float(np.dot(vector, vector)) ** 0.5
    watch.clients.append(client_id)


def observed_norms(watch: RoundWatch) -> np.ndarray:
    return watch.norms[: len(watch.clients)]


def observed_sketches(watch: RoundWatch) -> np.ndarray:
    return watch.sketches[: len(watch.clients)]
