"""The DP mechanism as it runs: secure noise of the right scale, clipping, ledger, budget, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedlm.config import ConfigError, apply_overrides, config_from_dict
from fedlm.privacy.accountant import epsilon_of, gaussian_round_event
from fedlm.privacy.adaptive_clip import next_clip_norm
from fedlm.privacy.noise import secure_gaussian, secure_uniform
from fedlm.sim.checkpoint import load_checkpoint
from fedlm.sim.engine import simulate
from fedlm.sim.rundir import read_metrics
from fedlm.sim.run import run_simulation
from fedlm.sim.setup import prepare
from fedlm.updates.pipeline import PipelineError


BASE = config_from_dict({
    "model": {"name": "tiny"},
    "data": {"seq_len": 64},
    "federation": {"rounds": 3, "clients_per_round": 3},
    "client": {"local_steps": 2, "batch_size": 2, "lr": 5e-3},
    "strategy": {"clip_norm": 0.5, "weighting": "uniform"},
    "privacy": {"noise_multiplier": 1.0},
    "eval": {"clients": 2, "max_sequences": 4},
})


def dp_config(**sections):
    """The base run with some tables' settings replaced."""
    return apply_overrides(BASE, sections)


def test_secure_noise_has_the_requested_std_and_no_repeats():
    # 200k draws: the sample std of N(0, 2.5^2) is within 1% with overwhelming probability
    draws = secure_gaussian(200_000, 2.5)
    assert draws.dtype == np.float32
    assert abs(draws.std() - 2.5) < 0.025
    assert abs(draws.mean()) < 0.02
    # fresh keys every call: two draws never coincide
    assert not np.array_equal(secure_gaussian(8, 1.0), secure_gaussian(8, 1.0))
    u = secure_uniform(100_000)
    assert u.min() > 0 and u.max() <= 1 and abs(u.mean() - 0.5) < 0.01


def test_central_noise_on_the_mean_has_std_z_c_over_cohort():
    # Prepare: a run whose clients send all-zero updates (lr 0 would be refused, so zero steps of
    # effect: we compare the global's movement with clipping at a tiny norm instead).
    sim = prepare(dp_config(strategy={"clip_norm": 1e-6, "weighting": "uniform"}, privacy={"noise_multiplier": 2.0},
                            federation={"rounds": 1}))
    # Execute
    result = simulate(sim)
    moved = result.state.global_vector - sim.adapter.initial_shared
    # Assert: the mean divides the noised sum by the cohort (3): std = z C / 3; the signal is <= 1e-6
    expected = 2.0 * 1e-6 / 3
    assert moved.std() == pytest.approx(expected, rel=0.05)


def test_distributed_shares_sum_to_the_same_noise():
    sim = prepare(dp_config(strategy={"clip_norm": 1e-6, "weighting": "uniform"},
                            privacy={"noise_multiplier": 2.0, "placement": "distributed"}, federation={"rounds": 1}))
    result = simulate(sim)
    moved = result.state.global_vector - sim.adapter.initial_shared
    assert moved.std() == pytest.approx(2.0 * 1e-6 / 3, rel=0.05)
    assert [s.name for s in sim.pipeline.steps] == ["clip", "noise_share", "mean"]


def test_dp_run_reports_epsilon_every_round_equal_to_the_accountant(tmp_path):
    # Execute
    summary = run_simulation(dp_config(), tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    # Assert: epsilon grows each round and equals dp-accounting on the same events
    population = summary["population"]
    event = gaussian_round_event(noise_multiplier=1.0, sampling="fixed", population=population, cohort=3)
    eps = [r["epsilon"] for r in records]
    assert eps == sorted(eps) and eps[0] > 0
    for t, value in enumerate(eps, start=1):
        assert value == pytest.approx(epsilon_of([event] * t, delta=records[0]["delta"]), rel=1e-9)
    assert records[0]["delta"] == pytest.approx(1 / population**1.1)
    assert summary["epsilon"] == eps[-1]


def test_small_target_epsilon_stops_before_exceeding_it_and_still_exports(tmp_path):
    # Prepare: with Poisson sampling each round costs a little; a target between rounds 2 and 3.
    base = dp_config(federation={"rounds": 6, "sampling": "poisson", "sample_rate": 0.005})
    sim = prepare(base)
    event = sim.pipeline.privacy.round_event()
    delta = sim.pipeline.privacy.delta
    target = (epsilon_of([event] * 2, delta=delta) + epsilon_of([event] * 3, delta=delta)) / 2
    config = dp_config(federation={"rounds": 6, "sampling": "poisson", "sample_rate": 0.005},
                       privacy={"noise_multiplier": 1.0, "target_epsilon": target})
    # Execute
    summary = run_simulation(config, tmp_path / "run")
    # Assert
    assert summary["status"] == "budget_exhausted"
    assert summary["rounds_done"] == 2
    assert summary["epsilon"] <= target
    assert "privacy.target_epsilon" in summary["stop_reason"]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_ledger_survives_a_resumed_run(tmp_path):
    # Prepare: 2 rounds, then resume to 4
    out = tmp_path / "run"
    run_simulation(dp_config(federation={"rounds": 2}), out)
    saved, _ = load_checkpoint(out)
    # Execute
    summary = run_simulation(dp_config(federation={"rounds": 4}), out, resume=True)
    # Assert: 4 events in the ledger, and epsilon equals 4 rounds' worth, not 2
    resumed, _ = load_checkpoint(out)
    assert [e.round for e in saved.ledger.entries] == [1, 2]
    assert [e.round for e in resumed.ledger.entries] == [1, 2, 3, 4]
    event = gaussian_round_event(noise_multiplier=1.0, sampling="fixed", population=summary["population"], cohort=3)
    assert summary["epsilon"] == pytest.approx(epsilon_of([event] * 4, delta=summary["delta"]), rel=1e-9)
    assert [r["round"] for r in read_metrics(out)] == [1, 2, 3, 4]


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    # Without DP (noise is fresh randomness by design), resuming is bit-exact.
    config2 = config_from_dict({"model": {"name": "tiny"}, "data": {"seq_len": 64},
                                "federation": {"rounds": 2, "clients_per_round": 3},
                                "client": {"local_steps": 2, "batch_size": 2},
                                "strategy": {"server_optimizer": "adam", "server_lr": 0.01},
                                "eval": {"clients": 2, "max_sequences": 4}})
    config4 = config_from_dict({**json.loads(json.dumps({"model": {"name": "tiny"}})), "data": {"seq_len": 64},
                                "federation": {"rounds": 4, "clients_per_round": 3},
                                "client": {"local_steps": 2, "batch_size": 2},
                                "strategy": {"server_optimizer": "adam", "server_lr": 0.01},
                                "eval": {"clients": 2, "max_sequences": 4}})
    run_simulation(config2, tmp_path / "split")
    run_simulation(config4, tmp_path / "split", resume=True)
    run_simulation(config4, tmp_path / "whole")
    split, _ = load_checkpoint(tmp_path / "split")
    whole, _ = load_checkpoint(tmp_path / "whole")
    assert split.global_vector.tobytes() == whole.global_vector.tobytes()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(split.opt_state, whole.opt_state, strict=True))


def test_adaptive_clipping_moves_the_norm_toward_the_quantile():
    # All 10 unclipped with target quantile 0.5: C shrinks by exp(-0.2 * (1 - 0.5))
    new, fraction = next_clip_norm(1.0, 10, arrived=10, expected_cohort=10, target_quantile=0.5, lr=0.2, count_std=0.0)
    assert fraction == 1.0 and new == pytest.approx(np.exp(-0.1))
    grown, _ = next_clip_norm(1.0, 0, arrived=10, expected_cohort=10, target_quantile=0.5, lr=0.2, count_std=0.0)
    assert grown == pytest.approx(np.exp(0.1))
    # centred bits: 6 arrivals, all unclipped, 10 expected -> (6 - 3) / 10 + 1/2 = 0.8
    _, partial = next_clip_norm(1.0, 6, arrived=6, expected_cohort=10, target_quantile=0.5, lr=0.2, count_std=0.0)
    assert partial == pytest.approx(0.8)
    with pytest.raises(ValueError, match="unclipped"):
        next_clip_norm(1.0, 7, arrived=6, expected_cohort=10, target_quantile=0.5, lr=0.2, count_std=0.0)


def test_adaptive_clipping_in_a_run_changes_the_clip_norm(tmp_path):
    run_simulation(dp_config(privacy={"noise_multiplier": 1.0, "adaptive_clip": True, "count_noise_multiplier": 2.0}),
                   tmp_path / "run")
    norms = [r["clip_norm"] for r in read_metrics(tmp_path / "run")]
    assert len(set(norms)) == 3 and all(n > 0 for n in norms)


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"strategy": {"clip_norm": 0.0, "weighting": "uniform"}}, "strategy.clip_norm"),
        ({"strategy": {"clip_norm": 1.0, "weighting": "samples"}}, "strategy.weighting"),
        ({"privacy": {"noise_multiplier": 1.0, "placement": "distributed"},
          "federation": {"sampling": "poisson", "sample_rate": 0.1}}, "privacy.placement"),
        ({"privacy": {"noise_multiplier": 0.0, "target_epsilon": 1.0}}, "privacy.target_epsilon"),
        ({"privacy": {"noise_multiplier": 1.0, "accountant": "pld"}}, "privacy.accountant"),
    ],
)
def test_dp_settings_that_cannot_work_are_refused(sections, key):
    with pytest.raises(ConfigError, match=key):
        dp_config(**sections)


def test_dp_with_a_robust_aggregator_is_refused_naming_both():
    with pytest.raises(PipelineError, match="median cannot be combined with central_noise"):
        prepare(dp_config(strategy={"clip_norm": 1.0, "weighting": "uniform", "aggregator": "median"}))


def test_delta_must_be_below_one_over_population():
    with pytest.raises(ValueError, match="privacy.delta"):
        prepare(dp_config(privacy={"noise_multiplier": 1.0, "delta": 0.5}))


def test_adaptive_clipping_with_too_little_count_noise_names_the_setting():
    with pytest.raises(ValueError, match="privacy.count_noise_multiplier"):
        prepare(dp_config(privacy={"noise_multiplier": 1.0, "adaptive_clip": True, "count_noise_multiplier": 0.5}))


def test_server_norm_bound_after_noise_shares_is_refused():
    with pytest.raises(PipelineError, match="norm_bound cannot be combined with noise_share"):
        prepare(dp_config(strategy={"clip_norm": 1.0, "weighting": "uniform", "norm_bound": 0.5},
                          privacy={"noise_multiplier": 1.0, "placement": "distributed"}))
