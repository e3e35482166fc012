"""Randomized Hadamard rotation: exact inverse, orthogonal, linear, spreads a spike, seeded."""

from __future__ import annotations


import numpy as np
import pytest
from scipy.linalg import hadamard as hadamard_matrix

from fedlm.aggregation.robust import l2_norm
from fedlm.updates.rotate import padded_size, random_signs, rotate, unrotate


def random_vector(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=size).astype(np.float32)


@pytest.mark.parametrize(("size", "padded"), [(0, 1), (1, 1), (2, 2), (3, 4), (1000, 1024), (1024, 1024), (1025, 2048)])
def test_padded_size_is_the_next_power_of_two(size, padded):
    assert padded_size(size) == padded


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_rotation_agrees_with_the_explicit_matrix(n):
    # Prepare: the reference H D x / sqrt(n) with scipy's Sylvester-Hadamard matrix
    vector = random_vector(n)
    expected = hadamard_matrix(n) @ (random_signs(n, seed=4) * vector) / np.sqrt(n)
    # Execute / Assert
    assert np.allclose(rotate(vector, seed=4), expected, atol=1e-6)


@pytest.mark.parametrize("size", [1, 3, 1000, 1024, 1025])
def test_round_trip_restores_the_vector(size):
    vector = random_vector(size)
    rotated = rotate(vector, seed=11)
    assert rotated.dtype == np.float32 and rotated.shape == (padded_size(size),)
    restored = unrotate(rotated, seed=11, size=size)
    assert restored.dtype == np.float32 and np.allclose(restored, vector, atol=1e-5)


def test_rotation_preserves_the_l2_norm():
    vector = random_vector(3000)
    assert l2_norm(rotate(vector, seed=1)) == pytest.approx(l2_norm(vector), rel=1e-6)


def test_rotation_is_linear_so_it_commutes_with_summation():
    # Prepare: three clients rotate with the round's shared seed
    clients = [random_vector(700, seed=s) for s in range(3)]
    # Execute: the server sums the rotated updates and unrotates the sum
    summed = unrotate(sum(rotate(c, seed=9) for c in clients), seed=9, size=700)
    # Assert
    assert np.allclose(rotate(clients[0] + clients[1], seed=9), rotate(clients[0], seed=9) + rotate(clients[1], seed=9), atol=1e-6)
    assert np.allclose(summed, sum(clients), atol=1e-5)


def test_a_one_hot_spike_is_spread_evenly():
    # Prepare: all of the norm in one coordinate
    spike = np.zeros(1000, dtype=np.float32)
    spike[123] = 3.0
    # Execute
    rotated = rotate(spike, seed=2)
    # Assert: every coordinate of H D e_i / sqrt(n) is +-1 / sqrt(n)
    assert np.allclose(np.abs(rotated), 3.0 / np.sqrt(1024), rtol=1e-6)


def test_same_seed_same_rotation_another_seed_another():
    vector = random_vector(500)
    assert np.array_equal(rotate(vector, seed=5), rotate(vector, seed=5))
    assert not np.allclose(rotate(vector, seed=5), rotate(vector, seed=6))


def test_unrotate_refuses_a_length_that_does_not_match_the_size():
    with pytest.raises(ValueError, match="a rotated vector of 1000 values has length 1024"):
        unrotate(np.zeros(512, dtype=np.float32), seed=0, size=1000)


def test_unrotate_leaves_its_input_unchanged():
    rotated = rotate(random_vector(100), seed=3)
    before = rotated.copy()
    unrotate(rotated, seed=3, size=100)
    assert np.array_equal(rotated, before)
