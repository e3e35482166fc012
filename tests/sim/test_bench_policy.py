"""The aggregation-policy bench: both paths fold the same synthetic updates, and FedBuff with K = N, no staleness,
makes the synchronous round's global."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from fedlm.server.buffered import BufferPolicy
from fedlm.server.rounds import initial_state
from fedlm.sim.bench import (bench_pipeline, bench_policies, fedbuff_pass, fedbuff_updates, make_synthetic_fleet,
                              sync_pass, sync_updates, within_noise)


def weighted_mean_step(start: np.ndarray, vectors: np.ndarray, samples: tuple[int, ...],
                       factors: np.ndarray) -> np.ndarray:
    """Reference in float64: start + sum(samples_i x factor_i x update_i) / sum(samples_i) (FedAvg, server lr 1)."""
    weights = np.asarray(samples, np.float64)
    return start + (weights * factors) @ vectors.astype(np.float64) / weights.sum()


def test_both_paths_fold_every_update_and_fedbuff_steps_every_k():
    # Execute: 40 updates, K = 8, staleness in [0, 3]
    result = bench_policies(clients=40, params=500, repetitions=2, policy=BufferPolicy(8, 3))
    # Assert
    assert result.sync_updates_folded == result.fedbuff_updates_folded == 40
    assert (result.sync_server_steps, result.fedbuff_server_steps) == (1, 5)
    assert (result.policy, result.clients, result.params, result.repetitions) == ("both", 40, 500, 2)
    assert result.buffer_size == 8
    assert 0 <= result.mean_staleness <= 3
    assert result.ratio == pytest.approx(result.fedbuff_us_per_update / result.sync_us_per_update)
    assert result.cpu_ratio == pytest.approx(result.fedbuff_cpu_us_per_update / result.sync_cpu_us_per_update)
    assert 0 < result.ratio_low <= result.ratio_high and 0 < result.cpu_ratio_low <= result.cpu_ratio_high
    assert 0 < result.sync_us_per_update_min <= result.sync_us_per_update
    assert 0 < result.fedbuff_us_per_update_min <= result.fedbuff_us_per_update
    assert result.floor_us_per_update > 0
    assert 0 < result.control_cpu_ratio_low <= result.control_cpu_ratio <= result.control_cpu_ratio_high
    assert result.as_dict()["within_noise"] == within_noise(result) in (True, False)


@pytest.mark.parametrize(("ratio", "inside"), [(1.03, True), (1.05, False), (0.97, True), (0.95, False)])
def test_within_noise_is_the_a_a_band_made_symmetric_about_one(ratio, inside):
    # Prepare: A/A paired ratios 0.98 to 1.04: the band is [min(0.98, 1/1.04), max(1.04, 1/0.98)] = [0.9615, 1.04]
    result = replace(bench_policies(clients=4, params=10, repetitions=1, policy=BufferPolicy(2, 1)),
                     cpu_ratio=ratio, control_cpu_ratio_low=0.98, control_cpu_ratio_high=1.04)
    # Execute / Assert
    assert within_noise(result) is inside


def test_updates_left_in_the_buffer_count_as_folded():
    # Execute: 10 updates, K = 4: two steps, two updates still buffered after the pass; FedBuff alone
    result = bench_policies(clients=10, params=50, repetitions=1, policy=BufferPolicy(4, 2), compare_sync=False)
    # Assert
    assert (result.fedbuff_server_steps, result.fedbuff_updates_folded) == (2, 10)
    assert result.policy == "fedbuff"
    assert result.sync_us_per_update is result.sync_updates_folded is result.ratio is result.cpu_ratio is None
    assert result.fedbuff_cpu_us_per_update > 0


def test_with_k_equal_n_and_zero_staleness_fedbuff_makes_the_synchronous_global():
    # Prepare: 30 updates of 200 values, no staleness, one buffer of all 30
    pipeline, fleet = bench_pipeline(200), make_synthetic_fleet(30, 200, max_staleness=0, seed=3)
    start = initial_state(np.linspace(-1, 1, 200, dtype=np.float32), pipeline)
    # Execute
    _, synchronous, folded = sync_pass(start, pipeline, sync_updates(fleet, start))
    _, buffer, steps = fedbuff_pass(start, pipeline, BufferPolicy(30, 0), fedbuff_updates(fleet, start, 30))
    # Assert: one step each, the same global, and both the sample-weighted mean of the 30 updates
    assert folded == 30 and len(steps) == 1 and steps[0].staleness == (0,) * 30
    assert synchronous.version == buffer.server.version == 1
    np.testing.assert_allclose(buffer.server.global_vector, synchronous.global_vector, rtol=0, atol=1e-6)
    reference = weighted_mean_step(start.global_vector, fleet.vectors, fleet.samples, np.ones(30))
    np.testing.assert_allclose(synchronous.global_vector, reference, rtol=0, atol=1e-6)
    assert not np.allclose(synchronous.global_vector, start.global_vector, atol=1e-5)  # the step moved it


def test_stale_updates_are_folded_with_their_sqrt_weight():
    # Prepare: 12 updates, staleness drawn in [0, 5], one buffer of all 12 over a server at version 5
    pipeline, fleet = bench_pipeline(64), make_synthetic_fleet(12, 64, max_staleness=5, seed=1)
    start = replace(initial_state(np.zeros(64, np.float32), pipeline), version=5)
    # Execute
    _, buffer, steps = fedbuff_pass(start, pipeline, BufferPolicy(12, 5), fedbuff_updates(fleet, start, 12))
    # Assert: the drawn staleness reached the buffer; each update weighs samples x 1/sqrt(1+s), divided by the samples
    assert steps[0].staleness == fleet.staleness and max(fleet.staleness) > 0
    factors = np.array([1 / math.sqrt(1 + s) for s in fleet.staleness])
    reference = weighted_mean_step(start.global_vector, fleet.vectors, fleet.samples, factors)
    np.testing.assert_allclose(buffer.server.global_vector, reference, rtol=0, atol=1e-6)


def test_the_synthetic_fleet_is_seeded_and_versions_follow_the_buffer():
    # Execute
    first, again = make_synthetic_fleet(9, 16, 4, seed=7), make_synthetic_fleet(9, 16, 4, seed=7)
    other = make_synthetic_fleet(9, 16, 4, seed=8)
    start = replace(initial_state(np.zeros(16, np.float32)), version=4)
    updates = fedbuff_updates(first, start, buffer_size=3)
    # Assert: the same seed, the same fleet; versions start from 4 + (arrival // K) - staleness
    assert first.staleness == again.staleness and first.samples == again.samples
    assert np.array_equal(first.vectors, again.vectors) and not np.array_equal(first.vectors, other.vectors)
    assert all(0 <= s <= 4 for s in first.staleness) and all(1 <= n <= 64 for n in first.samples)
    assert [u.version for u in updates] == [4 + i // 3 - s for i, s in enumerate(first.staleness)]


def test_bench_policies_refuses_a_buffer_larger_than_the_clients():
    with pytest.raises(ValueError, match="K = 11 is larger than N = 10"):
        bench_policies(clients=10, params=8, repetitions=1, policy=BufferPolicy(11, 0))
    with pytest.raises(ValueError, match="repetitions"):
        bench_policies(clients=10, params=8, repetitions=0, policy=BufferPolicy(2, 0))
