"""The client side of the pipeline: encode one update in place before it leaves the client."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedlm.updates.clip import clip_in_place
from fedlm.updates.pipeline import Pipeline


def make_encoder(pipeline: Pipeline) -> Callable[[np.ndarray], dict[str, float]] | None:
    """A function that runs the client steps on a delta in place and returns numeric metrics."""
    steps = pipeline.client_steps
    if not steps:
        return None

    def encode(vector: np.ndarray) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for step in steps:
            if step.name != "clip":
                raise ValueError(f"unknown client step {step.name!r}")
            clip_norm = step.param("clip_norm")
            norm = clip_in_place(vector, clip_norm)
            metrics["update_norm"] = norm
            metrics["clipped"] = float(norm > clip_norm)
        return metrics

    return encode
