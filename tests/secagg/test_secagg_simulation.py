"""Secure aggregation inside `fedlm simulate`: the same result as without it, up to rounding."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.config import ConfigError, apply_overrides, config_from_dict
from fedlm.secagg.messages import RoundFailed
from fedlm.server.rounds import initial_state, open_round
from fedlm.sim.engine import simulate
from fedlm.sim.secure_round import secure_round
from fedlm.sim.setup import prepare
from fedlm.updates.pipeline import PipelineError

BASE = config_from_dict({
    "model": {"name": "tiny"},
    "data": {"seq_len": 64},
    "lora": {"aggregation": "ffa"},
    "federation": {"rounds": 2, "clients_per_round": 4},
    "client": {"local_steps": 2, "batch_size": 2, "lr": 5e-3},
    "strategy": {"clip_norm": 0.05, "weighting": "uniform", "server_optimizer": "adam", "server_lr": 0.01},
    "privacy": {"noise_multiplier": 0.3, "placement": "distributed"},
    "eval": {"clients": 2, "max_sequences": 4},
})


def seeded_noise(monkeypatch):
    """Replace the secure noise source by a seeded one, so two runs draw the same noise shares."""
    rng = np.random.default_rng(11)

    def add_gaussian(vector, std):
        vector += rng.normal(0.0, std, vector.size).astype(np.float32)

    monkeypatch.setattr("fedlm.updates.client.add_gaussian", add_gaussian)


def test_secagg_ffa_distributed_dp_matches_the_run_without_secagg(monkeypatch):
    seeded_noise(monkeypatch)
    plain_sim = prepare(BASE)
    plain = simulate(plain_sim)
    seeded_noise(monkeypatch)
    secure_sim = prepare(apply_overrides(BASE, {"secagg": {"enabled": True}}))
    secure = simulate(secure_sim)
    assert [s.name for s in secure_sim.pipeline.steps] == ["clip", "noise_share", "secagg_mask", "mean", "secagg_unmask"]
    moved = plain.state.global_vector - plain_sim.adapter.initial_shared
    gap = np.abs(secure.state.global_vector - plain.state.global_vector).max()
    assert np.abs(moved).max() > 1e-3  # the runs trained
    assert gap < 1e-4 * np.abs(moved).max()  # rounding to 2^31 levels, through two Adam steps
    assert secure.state.version == 2 and secure.state.ledger == plain.state.ledger
    assert [r["accepted"] for r in secure.records] == [4, 4]


def test_a_round_whose_sum_cannot_be_recovered_is_abandoned(monkeypatch):
    def fail(*args, **kwargs):
        raise RoundFailed("too few survivors")

    monkeypatch.setattr("fedlm.sim.secure_round.run_round", fail)
    sim = prepare(apply_overrides(BASE, {"secagg": {"enabled": True}, "federation": {"rounds": 1}}))
    result = simulate(sim)
    assert result.state.version == 0 and result.state.rounds_done == 1
    assert np.array_equal(result.state.global_vector, sim.adapter.initial_shared)
    assert result.state.ledger.entries == ()  # nothing released, nothing spent
    assert result.records[0]["accepted"] == 0 and result.records[0]["failed"] == 4


@pytest.mark.parametrize("sections, match", [
    ({"strategy": {"aggregator": "median"}, "privacy": {"noise_multiplier": 0.0}}, "median needs to see individual updates"),
    ({"lora": {"aggregation": "svd"}, "strategy": {"server_optimizer": "sgd", "server_lr": 1.0}}, "lora_svd needs to see individual"),
    ({"compression": {"sparsify": "top_k", "fraction": 0.1}, "privacy": {"noise_multiplier": 0.0}}, "top_k needs to see individual"),
    ({"compression": {"quantize_bits": 8, "scale": "chunk"}, "privacy": {"noise_multiplier": 0.0}}, "compression.scale = 'chunk' cannot be combined with secagg.enabled"),
    ({"strategy": {"norm_bound": 1.0}, "privacy": {"noise_multiplier": 0.0}}, "norm_bound needs to see individual"),
])
def test_combinations_that_need_single_updates_are_refused(sections, match):
    config = apply_overrides(BASE, {"secagg": {"enabled": True}, **sections})
    with pytest.raises(PipelineError, match=match):
        prepare(config)


@pytest.mark.parametrize("sections, key", [
    ({"strategy": {"clip_norm": 0.0}, "privacy": {"noise_multiplier": 0.0}}, "strategy.clip_norm"),
    ({"strategy": {"weighting": "samples"}, "privacy": {"noise_multiplier": 0.0}}, "strategy.weighting"),
    ({"privacy": {"adaptive_clip": True, "noise_multiplier": 0.0}}, "privacy.adaptive_clip"),
    ({"secagg": {"enabled": True, "threshold": 0.3}}, "secagg.threshold"),
    ({"secagg": {"enabled": True, "neighbours": -2}}, "secagg.neighbours"),
])
def test_bad_secagg_settings_are_refused_naming_the_key(sections, key):
    with pytest.raises(ConfigError, match=key):
        apply_overrides(BASE, {"secagg": {"enabled": True}, **sections} if "secagg" not in sections else sections)


def test_a_cohort_of_one_releases_nothing():
    # a Poisson cohort can hold one client: there is no sum to hide its update in
    sim = prepare(apply_overrides(BASE, {"secagg": {"enabled": True}, "privacy": {"noise_multiplier": 0.0}}))
    state = initial_state(sim.adapter.initial_shared, sim.pipeline)
    rnd = open_round(state, (sim.population[0],), sim.pipeline)
    trained = []
    assert secure_round(rnd, state.global_vector.size, 0, lambda task, out: trained.append(task)) is None
    assert trained == [] and rnd.weights == {} and not rnd.total.any()


def test_secagg_with_a_random_mask_matches_the_run_without_it():
    # the mask keeps 2 % of coordinates and scales them by 50; updates clipped to a norm of 1e-4
    # have kept coordinates far past 1e-4 after that scaling: the encoding bound must grow with it
    sections = {"privacy": {"noise_multiplier": 0.0}, "compression": {"sparsify": "random", "fraction": 0.02},
                "strategy": {"server_optimizer": "sgd", "server_lr": 1.0, "clip_norm": 1e-4},
                "federation": {"rounds": 1}}
    plain_sim = prepare(apply_overrides(BASE, sections))
    plain = simulate(plain_sim)
    secure = simulate(prepare(apply_overrides(BASE, {**sections, "secagg": {"enabled": True}})))
    moved = plain.state.global_vector - plain_sim.adapter.initial_shared
    assert np.abs(moved).max() > 1e-5
    assert np.abs(secure.state.global_vector - plain.state.global_vector).max() < 1e-4 * np.abs(moved).max()
