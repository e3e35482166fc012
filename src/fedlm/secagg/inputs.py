"""What a client feeds secure aggregation: the bound its encoding needs, and the metrics it keeps.

Shared by the in-process simulation (sim.secure_round) and the service (service.secure_stages),
so both encode with the same bound and withhold the same per-update metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fedlm.core.rng import make_rng
from fedlm.secagg.server import SecAggServer
from fedlm.secagg.session import make_server
from fedlm.updates.client import secagg_grid
from fedlm.updates.pipeline import Pipeline, Stage

# How far past the clip norm a noised coordinate may reach before the encoding clips it:
# 8 standard deviations of a client's noise share (a chance of 1e-15 per coordinate).
NOISE_MARGIN_STDS = 8.0

# Metrics that describe a single update: a client under secure aggregation keeps them.
PER_UPDATE_METRICS = ("update_norm", "unclipped")


def value_bound(pipeline: Pipeline, clip_norm: float) -> float:
    """A bound on every coordinate of a client's input: the clip norm plus room for its noise share,
    divided by the kept fraction when a random mask rescales the kept coordinates to stay unbiased."""
    steps = {s.stage: s for s in pipeline.client_steps}
    bound = clip_norm
    share = steps.get(Stage.NOISE_SHARE)
    if share is not None:
        std = share.param("noise_multiplier") * clip_norm / math.sqrt(share.param("expected_cohort"))
        bound += NOISE_MARGIN_STDS * std
    sparsifier = steps.get(Stage.SPARSIFY)
    if sparsifier is not None and sparsifier.name == "random_mask":
        bound /= sparsifier.param("fraction")
    return bound


def round_server(pipeline: Pipeline, round: int, cohort: Sequence[str], *, size: int, clip_norm: float,
                 seed: int) -> SecAggServer:
    """A round's protocol server: k and t from the pipeline's mask step, the graph from (run seed, round)."""
    mask = pipeline.mask
    if mask is None:
        raise ValueError("this pipeline has no secure-aggregation step")
    grid = secagg_grid(pipeline, clip_norm=clip_norm, size=size)  # DP-safe 8-bit: the inputs' shared grid, sent as codes
    bound, step = (float(grid.scale), float(grid.step)) if grid else (value_bound(pipeline, clip_norm), 0.0)
    return make_server(round, cohort, size=size, neighbours=int(mask.param("neighbours")), threshold=mask.param("threshold"),
                       bound=bound, rng=make_rng(seed, "secagg-graph", round), step=step)
