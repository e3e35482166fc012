"""Client executors: a process pool gives the serial executor's results bit for bit, folds in
cohort order whatever order workers finish in, and turns a worker's death into a dropout."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import pytest

from fedlm.config import ConfigError, apply_overrides, config_from_dict
from fedlm.core.types import Task, Update
from fedlm.server.rounds import close_round, initial_state, make_tasks, open_round
from fedlm.sim.bench import bench_pipeline, make_constant_trainer
from fedlm.sim.cohort import ClientJob, NO_PRIVATE, make_jobs
from fedlm.sim.dispatch import Finished, run_in_order
from fedlm.sim.engine import fold_cohort, simulate
from fedlm.sim.setup import prepare
from fedlm.sim.workers import ProcessExecutor, WorkerFailed

TINY = config_from_dict({
    "model": {"name": "tiny", "threads": 1},  # the same torch thread count in every process
    "data": {"seq_len": 64},
    "federation": {"rounds": 3, "clients_per_round": 4},
    "client": {"local_steps": 2, "batch_size": 2, "lr": 5e-3},
    "lora": {"private": ["*layers.1.*lora_B*"]},  # client state that must travel with each client
    "eval": {"clients": 2, "max_sequences": 4},
})


def run_tiny(executor: str, workers: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], list[int]]:
    sim = prepare(apply_overrides(TINY, {"simulation": {"executor": executor, "workers": workers}}))
    private: dict[str, np.ndarray] = {}
    result = simulate(sim, private_state=private)
    return result.state.global_vector, private, [r["accepted"] for r in result.records]


def test_process_pool_gives_the_serial_global_bit_for_bit():
    # Prepare
    serial_global, serial_private, _ = run_tiny("serial")
    # Execute
    pool_global, pool_private, accepted = run_tiny("processes", workers=2)
    # Assert: the same global and the same client-side private parameters, byte for byte
    assert accepted == [4, 4, 4]
    assert pool_global.tobytes() == serial_global.tobytes()
    assert sorted(pool_private) == sorted(serial_private)
    assert all(pool_private[c].tobytes() == serial_private[c].tobytes() for c in serial_private)
    assert len({v.tobytes() for v in pool_private.values()}) > 1  # each client trained its own


@dataclass(frozen=True)
class DyingFactory:
    """The constant workload, except that the worker training `doomed` dies on the spot."""

    doomed: str
    preload: tuple[str, ...] = ()

    def __call__(self, threads: int):
        train = make_constant_trainer(bench_pipeline(1000), 1.0)

        def train_or_die(job: ClientJob, global_vector: np.ndarray, out: np.ndarray) -> Update:
            if job.task.client_id == self.doomed:
                os._exit(3)
            if job.task.client_id == "raises":
                raise RuntimeError("a bug in local training")
            return train(job, global_vector, out)

        return train_or_die


def play_round(state, cohort, executor):
    pipeline = bench_pipeline(state.global_vector.size)
    rnd = open_round(state, cohort, pipeline)
    fold_cohort(rnd, state.global_vector, make_jobs(make_tasks(rnd), {}, NO_PRIVATE), executor)
    return close_round(state, rnd)


def test_a_worker_that_dies_mid_round_is_that_clients_dropout_and_the_pool_goes_on():
    # Prepare: six clients on two workers; the worker that takes c3 dies
    cohort = tuple(f"c{i}" for i in range(6))
    start = np.arange(1000, dtype=np.float32)
    state = initial_state(start, bench_pipeline(1000))
    executor = ProcessExecutor(DyingFactory(doomed="c3"), workers=2, size=1000)
    try:
        # Execute
        state, first = play_round(state, cohort, executor)
        state, second = play_round(state, tuple(c for c in cohort if c != "c3"), executor)
        workers = executor.worker_count()
    finally:
        executor.close()
    # Assert: c3 failed, the five others were folded (each update is +1), and a new worker
    # took the dead one's place for the next round
    assert first.failed == ("c3",) and first.accepted == ("c0", "c1", "c2", "c4", "c5")
    assert second.failed == () and len(second.accepted) == 5
    assert workers == 2
    np.testing.assert_allclose(state.global_vector, start + 2, rtol=0, atol=1e-3)


@dataclass(frozen=True)
class HangingFactory:
    """The constant workload, except that the client `stuck` never finishes (a hang, not a death)."""

    stuck: str
    preload: tuple[str, ...] = ()

    def __call__(self, threads: int):
        train = make_constant_trainer(bench_pipeline(1000), 1.0)

        def train_or_hang(job: ClientJob, global_vector: np.ndarray, out: np.ndarray) -> Update:
            if job.task.client_id == self.stuck:
                time.sleep(3600)
            return train(job, global_vector, out)

        return train_or_hang


def test_a_client_that_hangs_fails_at_the_timeout_and_the_round_goes_on():
    # Prepare: six clients on two workers, c2 hangs; the timeout is 1.5 s
    cohort = tuple(f"c{i}" for i in range(6))
    start = np.zeros(1000, np.float32)
    state = initial_state(start, bench_pipeline(1000))
    executor = ProcessExecutor(HangingFactory(stuck="c2"), workers=2, size=1000, client_timeout=1.5)
    try:
        # Execute
        began = time.monotonic()
        state, outcome = play_round(state, cohort, executor)
        seconds = time.monotonic() - began
        workers = executor.worker_count()
        state, again = play_round(state, ("c0", "c1"), executor)  # the replacement worker trains
    finally:
        executor.close()
    # Assert: c2 failed at its deadline, the five others were folded (+1 each), the pool is whole
    assert outcome.failed == ("c2",) and outcome.accepted == ("c0", "c1", "c3", "c4", "c5")
    assert 1.5 <= seconds < 30 and workers == 2 and again.accepted == ("c0", "c1")
    np.testing.assert_allclose(state.global_vector, start + 2, rtol=0, atol=1e-3)


def test_an_exception_in_a_worker_stops_the_run_naming_the_client():
    # Prepare
    state = initial_state(np.zeros(1000, np.float32), bench_pipeline(1000))
    executor = ProcessExecutor(DyingFactory(doomed="nobody"), workers=1, size=1000)
    try:
        # Execute / Assert: a bug is not a dropout
        with pytest.raises(WorkerFailed, match="(?s)client raises raised in worker process .*a bug in local training"):
            play_round(state, ("ok", "raises"), executor)
    finally:
        executor.close()


class ReversePool:
    """Finishes every submitted job at once, the last submitted first."""

    def __init__(self, workers: int) -> None:
        self.workers, self.running, self.submitted = workers, [], []

    def has_idle(self) -> bool:
        return len(self.running) < self.workers

    def submit(self, position: int, job: ClientJob, slot: int) -> None:
        self.running.append(position)
        self.submitted.append((position, slot))

    def wait(self) -> list[Finished]:
        done, self.running = self.running[::-1], []
        return [Finished(p, None, "dead") if p == 2 else Finished(p, Update(1, 0, f"c{p}", 1, np.zeros(1, np.float32))) for p in done]


class Recorder:
    def __init__(self) -> None:
        self.events = []

    def started(self, job: ClientJob) -> None:
        self.events.append(("started", job.index))

    def delivered(self, job: ClientJob, update: Update) -> None:
        self.events.append(("delivered", job.index))

    def failed(self, job: ClientJob, reason: str) -> None:
        self.events.append(("failed", job.index))


def test_results_are_delivered_in_cohort_order_within_the_window():
    # Prepare
    jobs = [ClientJob(i, Task(1, 0, f"c{i}"), NO_PRIVATE) for i in range(7)]
    pool, sink = ReversePool(workers=3), Recorder()
    # Execute
    run_in_order(jobs, pool, sink, window=4)
    # Assert: delivered (or failed) strictly 0..6 although each batch finished in reverse
    outcomes = [(kind, i) for kind, i in sink.events if kind != "started"]
    assert outcomes == [("delivered", 0), ("delivered", 1), ("failed", 2), ("delivered", 3),
                        ("delivered", 4), ("delivered", 5), ("delivered", 6)]
    assert [slot for _, slot in pool.submitted] == [p % 4 for p, _ in pool.submitted]
    # never more than `window` jobs submitted ahead of the next one to deliver
    delivered = 0
    for kind, index in sink.events:
        if kind == "started":
            assert index < delivered + 4
        else:
            delivered += 1


@pytest.mark.parametrize("settings, key", [
    ({"executor": "threads"}, "simulation.executor"),
    ({"executor": "processes", "workers": -1}, "simulation.workers"),
    ({"workers": 4}, "simulation.workers"),  # serial runs one client at a time
    ({"executor": "processes", "address": "auto"}, "simulation.address"),
    ({"client_timeout_seconds": 5.0}, "simulation.client_timeout_seconds"),  # serial cannot stop a client
    ({"executor": "processes", "client_timeout_seconds": -1.0}, "simulation.client_timeout_seconds"),
])
def test_bad_simulation_settings_are_refused_naming_the_key(settings, key):
    with pytest.raises(ConfigError, match=key):
        config_from_dict({"simulation": settings})
