"""Central DP: the round engine holds each client to the clip norm its noise is calibrated to."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.config import FederationSettings, LoraSettings, PrivacySettings, StrategySettings
from fedlm.core.types import Update
from fedlm.core.vectors import make_spec
from fedlm.privacy.plan import make_privacy_plan
from fedlm.server.rounds import UpdateRejected, accept_update, initial_state, open_round
from fedlm.updates.build import build_pipeline


def test_central_dp_holds_clients_to_the_clip_norm():
    # clip norm 0.5 under central DP: a (0.3, 0.4) update (norm 0.5) is taken, (0.3, 0.41) is not
    plan = make_privacy_plan(PrivacySettings(noise_multiplier=1.0), FederationSettings(clients_per_round=2), population=100)
    pipeline = build_pipeline(StrategySettings(clip_norm=0.5, weighting="uniform"), LoraSettings(),
                              make_spec([("lora_B", (2,))]), plan)
    state = initial_state(np.zeros(2, np.float32), pipeline)
    rnd = open_round(state, ("a", "b"), pipeline)
    with pytest.raises(UpdateRejected, match="past the clip norm 0.5"):
        accept_update(rnd, Update(rnd.round, rnd.version, "a", 1, np.array([0.3, 0.41], np.float32)))
    assert rnd.weights == {} and not rnd.total.any()
    accept_update(rnd, Update(rnd.round, rnd.version, "a", 1, np.array([0.3, 0.4], np.float32)))
    assert rnd.weights == {"a": 1.0} and np.allclose(rnd.total, [0.3, 0.4])


def test_distributed_dp_leaves_the_noised_norm_alone():
    # a noise share makes the norm exceed C by design; only central placement enforces the clip
    plan = make_privacy_plan(PrivacySettings(noise_multiplier=1.0, placement="distributed"),
                             FederationSettings(clients_per_round=2), population=100)
    pipeline = build_pipeline(StrategySettings(clip_norm=0.5, weighting="uniform"), LoraSettings(),
                              make_spec([("lora_B", (2,))]), plan)
    rnd = open_round(initial_state(np.zeros(2, np.float32), pipeline), ("a", "b"), pipeline)
    accept_update(rnd, Update(rnd.round, rnd.version, "a", 1, np.array([0.9, 0.4], np.float32)))
    assert rnd.weights == {"a": 1.0}
