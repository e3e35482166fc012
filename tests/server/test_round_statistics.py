"""Round statistics the metrics publish: the clipped share (and its absence under DP), the released client metrics."""

from __future__ import annotations

import numpy as np

from fedlm.config import RunConfig, apply_overrides
from fedlm.core.types import Update
from fedlm.privacy.plan import make_privacy_plan
from fedlm.server.rounds import accept_update, clipped_share, initial_state, open_round
from fedlm.updates.build import build_pipeline

GLOBAL = np.zeros(4, np.float32)


def round_with(bits: dict[str, float | None], pipeline=None):
    state = initial_state(GLOBAL, pipeline)
    rnd = open_round(state, tuple(bits), pipeline)
    for client, bit in bits.items():
        metrics = {"train_loss": 2.0} | ({} if bit is None else {"unclipped": bit})
        accept_update(rnd, Update(1, 0, client, 1, np.full(4, 0.1, np.float32), metrics))
    return rnd


def test_the_clipped_share_is_the_share_of_reported_bits_that_say_clipped():
    # Assert: one of three unclipped -> 2/3 clipped; a client without the bit (no clipping) is not counted
    assert clipped_share(round_with({"a": 1.0, "b": 0.0, "c": 0.0})) == 2 / 3
    assert clipped_share(round_with({"a": 1.0, "b": 0.0, "c": None})) == 0.5
    assert clipped_share(round_with({"a": None, "b": None})) is None


def test_under_dp_neither_the_clipped_share_nor_a_client_loss_is_kept():
    # Prepare: the run's own central-DP pipeline (clip norm 1, the updates' norm is 0.2)
    run = apply_overrides(RunConfig(), {"strategy": {"clip_norm": 1.0, "weighting": "uniform"},
                                        "privacy": {"noise_multiplier": 1.0}, "federation": {"clients_per_round": 3}})
    plan = make_privacy_plan(run.privacy, run.federation, 100)
    pipeline = build_pipeline(run.strategy, run.lora, None, plan, run.compression)
    # Execute
    rnd = round_with({"a": 1.0, "b": 0.0, "c": 0.0}, pipeline)
    # Assert
    assert clipped_share(rnd) is None
    assert all("train_loss" not in m and "unclipped" not in m for m in rnd.metrics.values())
