"""Sparsification: a shared random mask that sums, top-k, and error feedback that loses nothing."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.updates.sparsify import kept_count, random_mask, random_sparsify_, top_k, top_k_with_feedback_


@pytest.mark.parametrize(
    ("size", "fraction", "kept"),
    [(1000, 0.1, 100), (10, 0.25, 2), (10, 0.35, 4), (7, 0.01, 1), (5, 1.0, 5), (0, 0.5, 0)],
)
def test_kept_count_rounds_half_to_even_and_keeps_at_least_one(size, fraction, kept):
    assert kept_count(size, fraction=fraction) == kept


def test_random_mask_is_the_sorted_draw_without_replacement_from_the_seed():
    # Prepare: what every client computes from the round's shared seed
    expected = np.sort(np.random.default_rng(42).choice(1000, size=100, replace=False))
    # Execute
    mask = random_mask(1000, fraction=0.1, seed=42)
    # Assert
    assert mask.dtype == np.int64 and np.array_equal(mask, expected)
    assert np.unique(mask).size == 100 and np.all(np.diff(mask) > 0)


def test_random_mask_is_the_same_for_the_same_seed_and_differs_for_another():
    assert np.array_equal(random_mask(500, fraction=0.2, seed=1), random_mask(500, fraction=0.2, seed=1))
    assert not np.array_equal(random_mask(500, fraction=0.2, seed=1), random_mask(500, fraction=0.2, seed=2))


def test_masked_client_updates_sum_to_the_masked_sum():
    # Prepare: three clients, six coordinates, half kept, so the scale is 6 / 3 = 2
    clients = [
        np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=np.float32),
        np.array([-1.0, 0.0, 1.0, -2.0, 0.5, 3.0], dtype=np.float32),
        np.array([10.0, -4.0, 0.0, 1.0, 1.0, -6.0], dtype=np.float32),
    ]
    total = sum(clients)  # [10, -2, 4, 3, 6.5, 3]
    mask = random_mask(6, fraction=0.5, seed=7)
    # Execute: each client sparsifies with the shared seed; the server only sums
    for vector in clients:
        random_sparsify_(vector, fraction=0.5, seed=7)
    # Assert: the sum of the sparse updates is the sparsified sum
    expected = np.zeros(6, dtype=np.float32)
    expected[mask] = 2 * total[mask]
    assert mask.size == 3 and np.array_equal(sum(clients), expected)


@pytest.mark.parametrize("fraction", [0.3, 0.25])  # 0.25 * 10 rounds to k = 2: scale 5, not 4
def test_random_sparsify_is_unbiased_over_the_mask(fraction):
    # Prepare
    vector = np.array([1.0, -2.0, 0.5, 3.0, 0.0, -1.5, 2.5, 0.25, -0.75, 4.0])
    seeds = 4000
    keep = kept_count(vector.size, fraction=fraction) / vector.size
    # Execute
    total = np.zeros_like(vector)
    for seed in range(seeds):
        sparse = vector.copy()
        random_sparsify_(sparse, fraction=fraction, seed=seed)
        total += sparse
    # Assert: each coordinate is x / keep with probability keep, else 0
    standard_error = np.abs(vector) * np.sqrt((1 / keep - 1) / seeds)
    assert np.all(np.abs(total / seeds - vector) <= 4 * standard_error + 1e-12)


def test_top_k_picks_the_largest_magnitudes():
    vector = np.array([0.1, -5.0, 3.0, 0.0, -2.0, 4.0], dtype=np.float32)
    indices = top_k(vector, fraction=0.5)
    assert indices.dtype == np.int64 and indices.tolist() == [1, 2, 5]


def test_fraction_one_keeps_everything():
    vector = np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32)
    before = vector.copy()
    random_sparsify_(vector, fraction=1.0, seed=3)
    assert np.array_equal(vector, before)
    assert top_k(vector, fraction=1.0).tolist() == [0, 1, 2, 3]
    residual = np.zeros(4, dtype=np.float32)
    top_k_with_feedback_(vector, residual, fraction=1.0)
    assert np.array_equal(vector, before) and not residual.any()


def test_error_feedback_sends_everything_eventually():
    # Prepare: two rounds of one client, k = 2 of 4
    first = np.array([4.0, -1.0, 2.0, 0.5], dtype=np.float32)
    second = np.array([1.0, 3.0, -0.5, 1.0], dtype=np.float32)
    residual = np.zeros(4, dtype=np.float32)
    sent_first, sent_second = first.copy(), second.copy()
    # Execute
    top_k_with_feedback_(sent_first, residual, fraction=0.5)
    assert sent_first.tolist() == [4.0, 0.0, 2.0, 0.0] and residual.tolist() == [0.0, -1.0, 0.0, 0.5]
    top_k_with_feedback_(sent_second, residual, fraction=0.5)  # chooses among [1, 2, -0.5, 1.5]
    # Assert: what was sent plus the residual is the sum of the inputs, exactly
    assert sent_second.tolist() == [0.0, 2.0, 0.0, 1.5] and residual.tolist() == [1.0, 0.0, -0.5, 0.0]
    assert np.array_equal(sent_first + sent_second + residual, first + second)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_invalid_fraction_is_refused_and_nothing_changes(fraction):
    vector = np.array([1.0, -2.0, 3.0], dtype=np.float32)
    residual = np.array([0.5, 0.0, 0.0], dtype=np.float32)
    with pytest.raises(ValueError, match="fraction must be in"):
        random_sparsify_(vector, fraction=fraction, seed=0)
    with pytest.raises(ValueError, match="fraction must be in"):
        top_k_with_feedback_(vector, residual, fraction=fraction)
    with pytest.raises(ValueError, match="fraction must be in"):
        random_mask(3, fraction=fraction, seed=0)
    assert vector.tolist() == [1.0, -2.0, 3.0] and residual.tolist() == [0.5, 0.0, 0.0]


def test_residual_of_another_shape_is_refused_and_nothing_changes():
    vector = np.array([1.0, -2.0, 3.0], dtype=np.float32)
    residual = np.array([0.5, 0.0], dtype=np.float32)
    with pytest.raises(ValueError, match="residual has shape"):
        top_k_with_feedback_(vector, residual, fraction=0.5)
    assert vector.tolist() == [1.0, -2.0, 3.0] and residual.tolist() == [0.5, 0.0]
