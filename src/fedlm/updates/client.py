"""The client side of the pipeline: encode one update in place before it leaves the client."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fedlm.privacy.noise import add_gaussian
from fedlm.updates.clip import clip_in_place
from fedlm.updates.pipeline import Pipeline


Encoder = Callable[[np.ndarray, float], dict[str, float]]


def make_encoder(pipeline: Pipeline) -> Encoder | None:
    """A function (delta, the task's clip norm) -> metrics that runs the client steps in place.

    The metrics are numbers only; `unclipped` is the bit adaptive clipping counts.
    """
    steps = pipeline.client_steps
    if not steps:
        return None

    def encode(vector: np.ndarray, clip_norm: float) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for step in steps:
            if step.name == "clip":
                norm = clip_in_place(vector, clip_norm)
                metrics["update_norm"] = norm
                metrics["unclipped"] = float(norm <= clip_norm)
            elif step.name == "noise_share":
                # each of the n expected clients adds N(0, (z C)^2 / n): the sum carries N(0, (z C)^2)
                std = step.param("noise_multiplier") * clip_norm / math.sqrt(step.param("expected_cohort"))
                add_gaussian(vector, std)
            else:
                raise ValueError(f"unknown client step {step.name!r}")
        return metrics

    return encode
