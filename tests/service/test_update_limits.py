"""Red-team finding 1: on the service's defaults one cohort member must not be able to wreck the model.

The attack: `num_samples = 2^31 - 1` and a dense body of 1e14s. With the run config's
defaults alone (sample weighting, no norm bound) the service accepted it and the global's
largest value became ~1e14; with the service's [limits] (a norm bound and a weight cap,
applied where the run config sets none) the attacker moves the mean by at most the bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.config import ConfigError, RunConfig, apply_overrides
from fedlm.server.rounds import MAX_SAMPLES
from fedlm.service.limits import describe_limits, with_limits
from fedlm.service.settings import LimitsSection, ServiceSettings, settings_from_dict
from fedlm.updates import wire

from conftest import INITIAL, build_service

HONEST = np.array([0.1, -0.1, 0.0, 0.2, 0.0, 0.1], np.float32)


def attack_round(service) -> np.ndarray:
    """Alice and Bob send the same small honest update with 10 samples; Mallory the 1e14 vector claiming 2^31 - 1."""
    names = ("alice", "bob", "mallory")
    for name in names:
        assert service.clients[name].post("/v1/clients/register", json={}).status_code == 200
    for name in names:
        assert service.clients[name].post("/v1/tasks/next", json={}).json()["task"]["round"] == 1
    bodies = {"alice": (HONEST, 10), "bob": (HONEST, 10), "mallory": (np.full(6, 1e14, np.float32), MAX_SAMPLES)}
    for name, (vector, samples) in bodies.items():
        answer = service.clients[name].post("/v1/rounds/1/updates", params={"version": 0, "num_samples": samples},
                                            content=wire.serialize_dense(vector))
        assert answer.status_code == 200, answer.text
    assert service.coordinator.state.version == 1
    return service.coordinator.state.global_vector - INITIAL


def service_run(limits: LimitsSection) -> dict:
    run = with_limits(apply_overrides(RunConfig(), {"model": {"name": "tiny"}}), norm_bound=limits.norm_bound,
                      max_client_weight=limits.max_client_weight)
    return {"strategy": {"norm_bound": run.strategy.norm_bound, "max_client_weight": run.strategy.max_client_weight}}


def test_the_attack_wrecks_the_model_without_limits(tmp_path):
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", names=("alice", "bob", "mallory"),
                            clients_per_round=3, overrides=service_run(LimitsSection(norm_bound=0, max_client_weight=0)))
    delta = attack_round(service)
    assert np.abs(delta).max() > 1e13  # what the red team saw: the global is the attacker's


def test_the_default_limits_bound_what_one_client_can_do(tmp_path):
    limits = LimitsSection()
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", names=("alice", "bob", "mallory"),
                            clients_per_round=3, overrides=service_run(limits))
    delta = attack_round(service)
    # Worked: honest updates (norm 0.265 < bound) pass unscaled with weight 10 each; Mallory's is scaled to norm
    # B = limits.norm_bound (each of 6 equal values B / sqrt(6)) with weight W = limits.max_client_weight.
    bound, cap = limits.norm_bound, limits.max_client_weight
    attacker = np.full(6, bound / np.sqrt(6), np.float32)
    expected = (10 * HONEST + 10 * HONEST + cap * attacker) / (20 + cap)
    np.testing.assert_allclose(delta, expected, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(delta) <= bound * (1 + 1e-6)  # the mean moved by at most the bound
    with service.coordinator.store.session() as session:
        from fedlm.service import store as db

        share = session.get(db.VersionRow, 1).metrics["max_client_share"]
    assert share == pytest.approx(cap / (20 + cap))


def test_limits_fill_only_bounds_the_run_config_leaves_off():
    base = apply_overrides(RunConfig(), {"model": {"name": "tiny"}})
    filled = with_limits(base, norm_bound=10.0, max_client_weight=500.0)
    assert (filled.strategy.norm_bound, filled.strategy.max_client_weight) == (10.0, 500.0)
    own = apply_overrides(base, {"strategy": {"norm_bound": 2.0, "max_client_weight": 50.0}})
    kept = with_limits(own, norm_bound=10.0, max_client_weight=500.0)
    assert (kept.strategy.norm_bound, kept.strategy.max_client_weight) == (2.0, 50.0)
    lifted = with_limits(base, norm_bound=0.0, max_client_weight=0.0)
    assert (lifted.strategy.norm_bound, lifted.strategy.max_client_weight) == (0.0, 0.0)
    uniform = with_limits(apply_overrides(base, {"strategy": {"weighting": "uniform"}}), norm_bound=10.0, max_client_weight=500.0)
    assert uniform.strategy.max_client_weight == 0.0 and uniform.strategy.norm_bound == 10.0
    assert describe_limits(filled) == "update limits: norm <= 10, weight <= 500 samples"


def test_secure_aggregation_and_dp_runs_get_no_server_norm_bound():
    secagg = apply_overrides(RunConfig(), {"model": {"name": "tiny"}, "strategy": {"clip_norm": 1.0, "weighting": "uniform"},
                                           "secagg": {"enabled": True}})
    assert with_limits(secagg, norm_bound=10.0, max_client_weight=500.0).strategy.norm_bound == 0.0
    dp = apply_overrides(RunConfig(), {"model": {"name": "tiny"}, "strategy": {"clip_norm": 1.0, "weighting": "uniform"},
                                       "privacy": {"noise_multiplier": 1.0}})
    limited = with_limits(dp, norm_bound=10.0, max_client_weight=500.0)
    assert limited.strategy.norm_bound == 0.0
    assert describe_limits(limited) == "update limits: norm bounded by the clients' clip, uniform weights"


def test_server_toml_limits_section_is_checked_and_applied(tmp_path):
    settings = settings_from_dict({"limits": {"norm_bound": 3.5}}, root=tmp_path)
    run = settings.run_config()
    assert run.strategy.norm_bound == 3.5 and run.strategy.max_client_weight == LimitsSection().max_client_weight
    assert ServiceSettings().run_config().strategy.norm_bound == LimitsSection().norm_bound
    with pytest.raises(ConfigError, match="limits.norm_bound"):
        settings_from_dict({"limits": {"norm_bound": -1}})
