"""FedBuff in the simulation (sim/async_engine.py) on its virtual clock (sim/virtual_clock.py), and the [policy] settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from fedlm.cli.main import app
from fedlm.config import ConfigError, apply_overrides, config_from_dict
from fedlm.server.buffered import BufferPolicy, accept_stale, new_buffer
from fedlm.server.policy_settings import PolicySettings, check_policy_combinations
from fedlm.server.rounds import accept_update, close_round, initial_state, make_tasks, open_round
from fedlm.sim.async_engine import simulate_fedbuff
from fedlm.sim.cohort import make_jobs
from fedlm.sim.rundir import read_metrics
from fedlm.sim.run import run_simulation
from fedlm.sim.setup import prepare
from fedlm.sim.threads import single_thread_blas
from fedlm.sim.trainers import make_lora_trainer
from fedlm.sim.virtual_clock import slow_clients, sync_round_seconds, task_seconds

FEDBUFF = {"kind": "fedbuff", "buffer_size": 2, "concurrency": 3, "max_staleness": 1, "slow_share": 0.25}
BASE = config_from_dict({
    "model": {"name": "tiny"},
    "data": {"seq_len": 64},
    "federation": {"rounds": 3, "clients_per_round": 3},
    "client": {"local_steps": 2, "batch_size": 2, "lr": 5e-3},
    "eval": {"clients": 2, "max_sequences": 8},
    "monitoring": {"enabled": False},
})


def tiny_config(**sections):
    return apply_overrides(BASE, sections)


# --- the virtual clock ------------------------------------------------------------------------


def test_same_seed_gives_the_same_schedule_and_another_seed_does_not():
    # Prepare
    settings = PolicySettings(kind="fedbuff", compute_sigma=1.0)
    clients = [f"client{i}" for i in range(20)]

    def schedule(seed: int) -> list[float]:
        return [task_seconds(settings, seed=seed, client_id=c, task=t, local_steps=4, slow=False)
                for c in clients for t in (1, 2, 3)]

    # Execute
    first, again, other = schedule(7), schedule(7), schedule(8)
    # Assert
    assert first == again
    assert first != other
    assert len(set(first)) == len(first)  # every (client, task) has a draw of its own


def test_task_time_by_hand_with_no_spread():
    # Prepare: sigma 0, so every step takes exactly e^mu = 2 s
    settings = PolicySettings(kind="fedbuff", compute_mu=math.log(2), compute_sigma=0.0, slow_factor=10.0,
                              network_seconds=1.5)
    # Execute
    fast = task_seconds(settings, seed=0, client_id="a", task=1, local_steps=3, slow=False)
    slow = task_seconds(settings, seed=0, client_id="a", task=1, local_steps=3, slow=True)
    # Assert: 3 steps x 2 s + 1.5 s; slow: 3 x 2 x 10 + 1.5
    assert fast == pytest.approx(7.5, rel=1e-12)
    assert slow == pytest.approx(61.5, rel=1e-12)


def test_slow_clients_are_the_share_asked_for_and_slower_by_the_factor():
    # Prepare
    settings = PolicySettings(kind="fedbuff", compute_sigma=0.8, slow_share=0.2, slow_factor=4.0, network_seconds=0.5)
    population = [f"c{i:03d}" for i in range(50)]
    # Execute
    slow = slow_clients(population, share=0.2, seed=3)
    times = {c: (task_seconds(settings, seed=3, client_id=c, task=5, local_steps=6, slow=False),
                 task_seconds(settings, seed=3, client_id=c, task=5, local_steps=6, slow=True)) for c in population}
    # Assert
    assert len(slow) == 10 and slow == slow_clients(list(reversed(population)), share=0.2, seed=3)
    assert slow != slow_clients(population, share=0.2, seed=4)
    for fast_time, slow_time in times.values():
        assert slow_time - 0.5 == pytest.approx(4.0 * (fast_time - 0.5), rel=1e-12)


def test_median_step_time_is_e_to_the_mu():
    # Prepare
    settings = PolicySettings(kind="fedbuff", compute_mu=1.0, compute_sigma=0.7)
    # Execute
    steps = [task_seconds(settings, seed=1, client_id=f"c{i}", task=1, local_steps=1, slow=False) for i in range(4000)]
    # Assert: the log-normal's median is e^1 = 2.718 (4000 draws: within 3 %)
    assert np.median(steps) == pytest.approx(math.e, rel=0.03)


def test_a_synchronous_round_waits_for_its_slowest_client():
    # Prepare
    settings = PolicySettings(kind="fedbuff", compute_sigma=0.5, slow_factor=10.0)
    cohort = ("a", "b", "c")
    each = [task_seconds(settings, seed=2, client_id=c, task=4, local_steps=3, slow=c == "b") for c in cohort]
    # Execute
    seconds = sync_round_seconds(settings, seed=2, cohort=cohort, round=4, local_steps=3, slow=frozenset({"b"}))
    # Assert
    assert seconds == max(each) == each[1]


# --- the [policy] settings and what fedbuff refuses --------------------------------------------------


@pytest.mark.parametrize(("table", "problem"), [
    ({"kind": "async"}, "policy.kind: must be one of"),
    ({"kind": "fedbuff", "buffer_size": 0}, "policy.buffer_size: must be >= 1"),
    ({"kind": "fedbuff", "concurrency": 0}, "policy.concurrency: must be >= 1"),
    ({"kind": "fedbuff", "max_staleness": -1}, "policy.max_staleness: must be >= 0"),
    ({"kind": "fedbuff", "staleness_weight": "linear"}, "policy.staleness_weight: must be one of"),
    ({"kind": "fedbuff", "slow_share": 1.5}, "policy.slow_share: must be in [0, 1]"),
    ({"kind": "fedbuff", "slow_factor": 0.5}, "policy.slow_factor: must be in [1, 1e6]"),
    ({"kind": "fedbuff", "compute_sigma": -1.0}, "policy.compute_sigma: must be in [0, 5]"),
    ({"kind": "fedbuff", "network_seconds": -1.0}, "policy.network_seconds: must be in [0, 1e9]"),
    ({"buffer_size": 8}, "policy.buffer_size: applies to policy.kind = 'fedbuff' only"),
    ({"quorum": 3}, "policy.quorum: applies to policy.kind = 'quorum' only"),
    ({"kind": "fedbuff", "deadline_seconds": 5.0}, "policy.deadline_seconds: applies to policy.kind = 'quorum' only"),
    ({"kind": "quorum"}, "policy.quorum: policy.kind = 'quorum' needs a quorum or a deadline_seconds"),
    ({"kind": "quorum", "quorum": -1}, "policy.quorum: must be an integer >= 0"),
])
def test_policy_settings_refuse_a_bad_value_naming_the_key(table: dict, problem: str):
    # Execute / Assert
    with pytest.raises(ConfigError) as err:
        config_from_dict({"policy": table})
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


@pytest.mark.parametrize(("tables", "key"), [
    ({"privacy": {"noise_multiplier": 1.0}, "strategy": {"clip_norm": 1.0, "weighting": "uniform"}},
     "privacy.noise_multiplier: differential privacy cannot be combined with policy.kind = 'fedbuff'"),
    ({"secagg": {"enabled": True}, "strategy": {"clip_norm": 1.0, "weighting": "uniform"}},
     "secagg.enabled: secure aggregation cannot be combined with policy.kind = 'fedbuff'"),
    ({"strategy": {"aggregator": "median"}}, "strategy.aggregator: 'median' cannot be combined with policy.kind = 'fedbuff'"),
    ({"lora": {"aggregation": "svd"}}, "lora.aggregation: 'svd' cannot be combined with policy.kind = 'fedbuff'"),
    ({"simulation": {"executor": "processes"}},
     "simulation.executor: 'processes' cannot be combined with policy.kind = 'fedbuff'"),
    ({"simulation": {"executor": "ray"}}, "simulation.executor: 'ray' cannot be combined with policy.kind = 'fedbuff'"),
    ({"federation": {"sampling": "poisson", "sample_rate": 0.1}},
     "federation.sampling: 'poisson' does not apply to policy.kind = 'fedbuff'"),
])
def test_fedbuff_refuses_what_it_cannot_account_or_run_naming_both_settings(tables: dict, key: str):
    # Execute / Assert (the check may run when the config is built, or when the run starts)
    with pytest.raises(ConfigError) as err:
        check_policy_combinations(config_from_dict({**tables, "policy": {"kind": "fedbuff"}}))
    assert any(p.startswith(key) for p in err.value.problems), err.value.problems


def test_the_same_combinations_are_fine_under_sync():
    # Prepare
    config = config_from_dict({"privacy": {"noise_multiplier": 1.0}, "strategy": {"clip_norm": 1.0, "weighting": "uniform"},
                               "simulation": {"executor": "processes"}})
    # Execute / Assert: nothing raised
    check_policy_combinations(config)


def test_cli_refuses_fedbuff_with_dp_before_loading_anything(tmp_path):
    # Execute
    result = CliRunner().invoke(app, [
        "simulate", "--model", "tiny", "--quiet", "--out", str(tmp_path / "run"), "--set", "policy.kind=fedbuff",
        "--set", "privacy.noise_multiplier=1.0", "--set", "strategy.clip_norm=1.0", "--set", "strategy.weighting=uniform",
    ])
    # Assert
    assert result.exit_code == 2
    assert "privacy.noise_multiplier" in result.output and "policy.kind = 'fedbuff'" in result.output
    assert not (tmp_path / "run").exists()


def test_resume_is_refused_for_fedbuff(tmp_path):
    # Execute / Assert
    with pytest.raises(ValueError, match="--resume is not supported for policy.kind = 'fedbuff'"):
        run_simulation(tiny_config(policy=FEDBUFF), tmp_path / "run", resume=True)


def test_a_population_smaller_than_the_concurrency_is_refused():
    # Prepare
    sim = prepare(tiny_config(policy={**FEDBUFF, "concurrency": 100_000}))
    # Execute / Assert
    with pytest.raises(ValueError, match="policy.concurrency = 100000 and policy.buffer_size = 2 need at least 100000"):
        simulate_fedbuff(sim)


# --- the engine on the tiny model ---------------------------------------------------------------------


def test_buffer_of_real_updates_at_zero_staleness_equals_the_synchronous_round():
    # Prepare: three clients train from version 0 on the tiny model
    sim = prepare(tiny_config())
    state = initial_state(sim.adapter.initial_shared, sim.pipeline)
    rnd = open_round(state, sim.population[:3], sim.pipeline)
    jobs = make_jobs(make_tasks(rnd), {}, sim.adapter.initial_private)
    trainer = make_lora_trainer(sim)
    with single_thread_blas():
        updates = [trainer(job, state.global_vector, np.empty(state.global_vector.size, np.float32)) for job in jobs]
    buffer = new_buffer(state, sim.pipeline, BufferPolicy(buffer_size=3, max_staleness=0))
    # Execute
    for update in updates:
        accept_update(rnd, update)
        step = accept_stale(buffer, update)
    synchronous, _ = close_round(state, rnd)
    # Assert
    assert step is not None and step.version == synchronous.version == 1
    assert np.abs(synchronous.global_vector - state.global_vector).max() > 1e-4  # the round moved the global
    np.testing.assert_allclose(buffer.server.global_vector, synchronous.global_vector, rtol=0, atol=1e-6)
    assert buffer.server.global_vector.tobytes() == synchronous.global_vector.tobytes()


def test_same_seed_gives_the_same_fedbuff_run():
    # Prepare
    sim = prepare(tiny_config(policy=FEDBUFF))
    # Execute
    runs = [simulate_fedbuff(sim) for _ in range(2)]
    # Assert
    assert runs[0].state.global_vector.tobytes() == runs[1].state.global_vector.tobytes()
    timeless = [[{k: v for k, v in r.items() if k != "seconds"} for r in run.records] for run in runs]
    assert timeless[0] == timeless[1]
    assert runs[0].state.version == 3 and runs[0].final_eval.loss < runs[0].base_eval.loss
    assert max(r["staleness"]["max"] for r in runs[0].records) == 1.0  # stale updates within max_staleness are folded


def test_cli_fedbuff_run_writes_a_line_per_server_step_on_the_virtual_clock(tmp_path):
    # Execute: max_staleness 0 with 4 clients training for a buffer of 2: the slower ones arrive stale
    result = CliRunner().invoke(app, [
        "simulate", "--model", "tiny", "--quiet", "--out", str(tmp_path / "run"), "--rounds", "4",
        "--local-steps", "2", "--batch-size", "2", "--seq-len", "64",
        "--set", "eval.clients=2", "--set", "eval.max_sequences=8", "--set", "monitoring.enabled=false",
        "--set", "policy.kind=fedbuff", "--set", "policy.buffer_size=2", "--set", "policy.concurrency=4",
        "--set", "policy.max_staleness=0", "--set", "policy.slow_share=0.25", "--set", "policy.eval_every=2",
    ])
    # Assert
    assert result.exit_code == 0, result.output
    records = read_metrics(tmp_path / "run")
    assert [r["version"] for r in records] == [1, 2, 3, 4]
    seconds = [r["sim_seconds"] for r in records]
    assert all(later > earlier for earlier, later in zip(seconds, seconds[1:])) and seconds[0] > 0
    assert records[-1]["refused_total"] == sum(r["refused"] for r in records) > 0
    assert all(r["staleness"] == {"min": 0.0, "mean": 0.0, "max": 0.0} for r in records)  # only fresh ones were folded
    assert ["eval" in r for r in records] == [False, True, False, True]  # every 2nd step, and the last
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "run" / "checkpoint").exists()
