"""The Ray executor on a local Ray: two actors give the serial executor's global bit for bit,
and an actor that dies mid-round is its client's dropout."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest

from fedlm.config import apply_overrides, config_from_dict
from fedlm.server.rounds import close_round, initial_state, make_tasks, open_round
from fedlm.sim.bench import bench_pipeline, make_constant_trainer
from fedlm.sim.cohort import NO_PRIVATE, make_jobs
from fedlm.sim.engine import fold_cohort, simulate
from fedlm.sim.setup import prepare

ray = pytest.importorskip("ray", reason="the Ray executor needs the ray extra: pip install 'fedlm[ray]'")

TINY = config_from_dict({
    "model": {"name": "tiny", "threads": 1},  # the same torch thread count in every process
    "data": {"seq_len": 64},
    "federation": {"rounds": 3, "clients_per_round": 4},
    "client": {"local_steps": 2, "batch_size": 2, "lr": 5e-3},
    "lora": {"private": ["*layers.1.*lora_B*"]},
    "eval": {"clients": 2, "max_sequences": 4},
})


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors cannot import this test module
    yield
    ray.shutdown()


def run_tiny(executor: str, workers: int = 0):
    sim = prepare(apply_overrides(TINY, {"simulation": {"executor": executor, "workers": workers}}))
    private = {}
    result = simulate(sim, private_state=private)
    return result, private


def test_ray_actors_give_the_serial_global_bit_for_bit(local_ray):
    # Prepare
    serial, serial_private = run_tiny("serial")
    # Execute
    actors, actors_private = run_tiny("ray", workers=2)
    # Assert
    assert [r["accepted"] for r in actors.records] == [4, 4, 4]
    assert actors.state.global_vector.tobytes() == serial.state.global_vector.tobytes()
    assert [r["eval"]["loss"] for r in actors.records] == [r["eval"]["loss"] for r in serial.records]
    assert all(actors_private[c].tobytes() == v.tobytes() for c, v in serial_private.items())


@dataclass(frozen=True)
class DyingFactory:
    """The constant workload, except that the actor training `doomed` dies on the spot."""

    doomed: str
    preload: tuple[str, ...] = ()

    def __call__(self, threads: int):
        train = make_constant_trainer(bench_pipeline(1000), 1.0)

        def train_or_die(job, global_vector, out):
            if job.task.client_id == self.doomed:
                os._exit(3)
            return train(job, global_vector, out)

        return train_or_die


def test_an_actor_that_dies_mid_round_is_that_clients_dropout(local_ray):
    from fedlm.sim.ray_executor import RayExecutor

    # Prepare
    pipeline = bench_pipeline(1000)
    state = initial_state(np.zeros(1000, np.float32), pipeline)
    executor = RayExecutor(DyingFactory(doomed="c3"), workers=1)  # one actor: its replacement runs c4, c5
    try:
        rnd = open_round(state, tuple(f"c{i}" for i in range(6)), pipeline)
        # Execute
        fold_cohort(rnd, state.global_vector, make_jobs(make_tasks(rnd), {}, NO_PRIVATE), executor)
        workers = executor.worker_count()
    finally:
        executor.close()
    state, outcome = close_round(state, rnd)
    # Assert: c3 failed, the five others (+1 each) were folded, and the dead actor was replaced
    assert outcome.failed == ("c3",) and outcome.accepted == ("c0", "c1", "c2", "c4", "c5")
    assert workers == 1
    np.testing.assert_allclose(state.global_vector, 1.0, atol=1e-6)


@dataclass(frozen=True)
class HangingFactory:
    """The constant workload, except that the client `stuck` never finishes (a hang, not a death)."""

    stuck: str
    preload: tuple[str, ...] = ()

    def __call__(self, threads: int):
        train = make_constant_trainer(bench_pipeline(1000), 1.0)

        def train_or_hang(job, global_vector, out):
            if job.task.client_id == self.stuck:
                time.sleep(3600)
            return train(job, global_vector, out)

        return train_or_hang


def test_an_actor_that_hangs_fails_its_client_at_the_timeout(local_ray):
    from fedlm.sim.ray_executor import RayExecutor

    # Prepare: two actors; c1 hangs; the timeout is 2 s
    pipeline = bench_pipeline(1000)
    state = initial_state(np.zeros(1000, np.float32), pipeline)
    executor = RayExecutor(HangingFactory(stuck="c1"), workers=2, client_timeout=2.0)
    try:
        rnd = open_round(state, ("c0", "c1", "c2"), pipeline)
        # Execute
        began = time.monotonic()
        fold_cohort(rnd, state.global_vector, make_jobs(make_tasks(rnd), {}, NO_PRIVATE), executor)
        seconds = time.monotonic() - began
        workers = executor.worker_count()
    finally:
        executor.close()
    state, outcome = close_round(state, rnd)
    # Assert: c1 failed at its deadline, the round did not wait for the hang (3600 s), and its
    # actor was replaced (the new one is starting while the other actor trained c2)
    assert outcome.failed == ("c1",) and outcome.accepted == ("c0", "c2")
    assert 2.0 <= seconds < 120 and workers == 2
    np.testing.assert_allclose(state.global_vector, 1.0, atol=1e-6)


def test_fedlm_simulate_runs_end_to_end_on_local_ray(local_ray, tmp_path):
    import json

    from typer.testing import CliRunner

    from fedlm.cli.main import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "simulate", "--model", "tiny", "--rounds", "2", "--clients-per-round", "3", "--local-steps", "2",
        "--seq-len", "64", "--set", "eval.clients=2", "--set", "eval.max_sequences=4", "--set", "model.threads=1",
        "--executor", "ray", "--workers", "2", "--quiet", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_done"] == 2 and summary["version"] == 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert [json.loads(line)["accepted"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [3, 3]
