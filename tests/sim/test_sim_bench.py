"""The simulator's bench workload: correct sums through the engine, and memory that does not grow with N."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fedlm.config import SimulationSettings
from fedlm.server.rounds import initial_state
from fedlm.sim.bench import bench_pipeline, bench_rounds, make_constant_trainer, run_round
from fedlm.sim.cohort import SerialExecutor

P = 100_000
UPDATE_BYTES = 4 * P


def peak_traced_bytes_of_a_round(clients: int) -> int:
    """tracemalloc's peak (numpy reports its buffers to it) over one serial round after a warm-up round."""
    pipeline = bench_pipeline(P)
    executor = SerialExecutor(make_constant_trainer(pipeline, 1.0), P)
    state = initial_state(np.zeros(P, np.float32), pipeline)
    population = tuple(f"c{i:05d}" for i in range(clients))
    private: dict[str, np.ndarray] = {}
    state = run_round(state, population, pipeline, executor, private)
    tracemalloc.start()
    try:
        run_round(state, population, pipeline, executor, private)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_serial_round_holds_a_few_updates_however_many_clients():
    # Execute
    small, large = peak_traced_bytes_of_a_round(10), peak_traced_bytes_of_a_round(100)
    # Assert: ten times the clients costs less than one more update (per-client dicts only),
    # and a round holds a few vectors at most (sum, scratch, output buffer, mean)
    assert large - small < UPDATE_BYTES
    assert large < 6 * UPDATE_BYTES


def test_bench_rounds_fold_every_client_and_report_sane_figures():
    # Execute: each of 30 clients adds 0.5 to what it received, 1 warm-up + 3 rounds
    result = bench_rounds(clients=30, params=5000, rounds=3, constant=0.5)
    # Assert: FedAvg of identical +0.5 updates moves the global by 0.5 a round
    assert result.global_shift == pytest.approx(4 * 0.5, abs=1e-4)
    assert (result.clients, result.params, result.rounds, result.executor, result.workers) == (30, 5000, 3, "serial", 1)
    assert 0 < result.seconds_per_round_min <= result.seconds_per_round_median
    assert result.first_round_seconds > 0
    assert result.peak_rss_bytes >= result.baseline_rss_bytes > 0


def test_bench_rounds_on_a_process_pool_fold_the_same_sum():
    # Execute
    result = bench_rounds(clients=12, params=3000, rounds=1, settings=SimulationSettings(executor="processes", workers=2))
    serial = bench_rounds(clients=12, params=3000, rounds=1)
    # Assert
    assert result.workers == 2 and result.executor == "processes"
    assert result.global_shift == serial.global_shift
    assert result.peak_rss_bytes > serial.peak_rss_bytes  # the workers' resident memory is counted too
