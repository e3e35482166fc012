"""Quorum + deadline rounds on the virtual clock (sim/virtual_clock.round_timing, sim/engine), and timed sync rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedlm.config import ConfigError, apply_overrides, config_from_dict
from fedlm.server.cluster_settings import check_cluster_combinations
from fedlm.server.policy_settings import PolicySettings, check_policy_combinations
from fedlm.sim.engine import sample_cohort, simulate
from fedlm.sim.rundir import read_metrics
from fedlm.sim.run import run_simulation
from fedlm.sim.setup import prepare
from fedlm.sim.virtual_clock import round_timing, slow_clients, task_seconds

BASE = config_from_dict({
    "model": {"name": "tiny"},
    "data": {"seq_len": 64},
    "federation": {"rounds": 3, "clients_per_round": 4},
    "client": {"local_steps": 2, "batch_size": 2, "lr": 5e-3},
    "eval": {"clients": 2, "max_sequences": 8},
    "monitoring": {"enabled": False},
})
CLOCK = {"compute_sigma": 0.5, "slow_share": 0.25, "slow_factor": 20.0}


def steady(kind: str, **keys) -> PolicySettings:
    """Every step takes e^mu = 2 s (sigma 0): a fast task of 3 steps takes 6 s, a slow one (x10) 60 s."""
    return PolicySettings(kind=kind, compute_mu=math.log(2), compute_sigma=0.0, slow_factor=10.0, **keys)


@pytest.mark.parametrize(("kind", "keys", "seconds", "late"), [
    ("sync", {}, 60.0, set()),  # waits for the slowest
    ("quorum", {"quorum": 2}, 6.0, {"c", "d"}),  # the 2nd arrival (both fast ones at 6 s) closes it
    ("quorum", {"quorum": 3}, 60.0, set()),  # the 3rd arrival is a slow one
    ("quorum", {"deadline_seconds": 30.0}, 30.0, {"c", "d"}),  # the deadline comes before the slow ones
    ("quorum", {"deadline_seconds": 3.0}, 6.0, {"c", "d"}),  # nothing by the deadline: waits for the first arrival
    ("quorum", {"quorum": 3, "deadline_seconds": 30.0}, 30.0, {"c", "d"}),  # whichever comes first
])
def test_round_timing_by_hand(kind, keys, seconds, late):
    # Execute
    timing = round_timing(steady(kind, **keys), seed=0, cohort=("a", "b", "c", "d"), round=1, local_steps=3,
                          slow=frozenset({"c", "d"}))
    # Assert
    assert timing.seconds == pytest.approx(seconds, rel=1e-12)
    assert timing.late == late


def test_a_quorum_that_waits_for_everyone_is_the_synchronous_run_bit_for_bit():
    # Prepare: a deadline past every task: nobody is late
    sync = prepare(apply_overrides(BASE, {"policy": CLOCK}))
    quorum = prepare(apply_overrides(BASE, {"policy": {**CLOCK, "kind": "quorum", "deadline_seconds": 1e9}}))
    # Execute
    first, second = simulate(sync), simulate(quorum)
    # Assert
    assert first.state.global_vector.tobytes() == second.state.global_vector.tobytes()
    assert [r["sim_seconds"] for r in first.records] == [r["sim_seconds"] for r in second.records]
    assert all(r["late"] == 0 for r in second.records) and first.records[0]["policy"] == "sync"


def test_a_quorum_round_leaves_the_late_clients_out_untrained_and_ends_sooner():
    # Prepare: one slow client in four; a round closes at the third arrival
    config = apply_overrides(BASE, {"policy": {**CLOCK, "kind": "quorum", "quorum": 3}})
    sim = prepare(config)
    slow = slow_clients(sim.population, share=CLOCK["slow_share"], seed=config.run.seed)
    synchronous = simulate(prepare(apply_overrides(BASE, {"policy": CLOCK})))
    # Execute
    run = simulate(sim)
    # Assert: per round, the late clients are the ones whose task ends after the third arrival
    settings = config.policy
    elapsed = 0.0
    for record in run.records:
        cohort = sample_cohort(sim, record["round"])
        times = sorted(task_seconds(settings, seed=config.run.seed, client_id=c, task=record["round"],
                                    local_steps=config.client.local_steps, slow=c in slow) for c in cohort)
        elapsed += times[2]
        assert record["sim_seconds"] == pytest.approx(elapsed, rel=1e-12)
        assert record["late"] == record["failed"] == sum(t > times[2] for t in times) == 1
        assert record["accepted"] == 3
        # an untrained client reports no tokens: the round's tokens are three clients' worth
        assert record["train_tokens"] < synchronous.records[record["round"] - 1]["train_tokens"]
    assert run.records[-1]["sim_seconds"] < synchronous.records[-1]["sim_seconds"]
    assert not np.array_equal(run.state.global_vector, synchronous.state.global_vector)


def test_an_untimed_sync_run_has_no_clock_fields():
    run = simulate(prepare(BASE))
    assert all("sim_seconds" not in r and "late" not in r for r in run.records)


@pytest.mark.parametrize(("tables", "problem"), [
    ({"policy": {"kind": "quorum", "quorum": 2}, "secagg": {"enabled": True}}, "secagg.enabled"),
    ({"policy": {"kind": "quorum", "quorum": 2}, "clusters": {"count": 2}}, "policy.kind"),
    ({"policy": {"slow_share": 0.2}, "clusters": {"count": 2}}, "policy.kind"),
])
def test_quorum_refuses_what_it_cannot_run_naming_the_settings(tables, problem):
    with pytest.raises(ConfigError) as err:
        config = config_from_dict(tables)
        check_policy_combinations(config)
        check_cluster_combinations(config)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_a_resumed_quorum_run_keeps_the_simulated_clock_of_the_rounds_it_ran(tmp_path):
    # Prepare: 3 rounds straight, and 2 rounds then --resume to 3, on the same seed and clock
    config = apply_overrides(BASE, {"policy": {**CLOCK, "kind": "quorum", "quorum": 3}})
    run_simulation(config, tmp_path / "straight")
    run_simulation(apply_overrides(config, {"federation": {"rounds": 2}}), tmp_path / "resumed")
    # Execute
    run_simulation(config, tmp_path / "resumed", resume=True)
    # Assert: the third round's line has the same simulated time as the uninterrupted run's
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["sim_seconds"] for r in resumed] == [r["sim_seconds"] for r in straight]
    assert [r["late"] for r in resumed] == [r["late"] for r in straight]
