"""Tests of cohort sampling: fixed-size uniform and Poisson."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedlm.server.selection import sample_fixed, sample_poisson

POPULATION = [f"c{i:02d}" for i in range(10)]


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


# --- sample_fixed -----------------------------------------------------------------------


@pytest.mark.parametrize(("size", "expected"), [(1, 1), (3, 3), (10, 10), (15, 10)])
def test_sample_fixed_returns_sorted_distinct_members(size: int, expected: int):
    # Execute
    cohort = sample_fixed(POPULATION, size, np.random.default_rng(0))
    # Assert
    assert len(cohort) == expected
    assert len(set(cohort)) == expected
    assert list(cohort) == sorted(cohort)
    assert set(cohort) <= set(POPULATION)


def test_sample_fixed_takes_everyone_when_asked_for_more():
    assert sample_fixed(["b", "c", "a"], 5, np.random.default_rng(0)) == ("a", "b", "c")


def test_sample_fixed_is_deterministic_per_seed():
    # Execute
    first = [sample_fixed(POPULATION, 3, np.random.default_rng(s)) for s in range(20)]
    again = [sample_fixed(POPULATION, 3, np.random.default_rng(s)) for s in range(20)]
    # Assert
    assert first == again
    assert len(set(first)) > 10  # different seeds, mostly different cohorts


def test_sample_fixed_picks_every_client_equally_often():
    # Prepare: 3000 draws of 3 of 10 -> each client expected 900 times (sd about 25)
    rng = np.random.default_rng(1)
    # Execute
    counts = Counter(c for _ in range(3000) for c in sample_fixed(POPULATION, 3, rng))
    # Assert
    assert set(counts) == set(POPULATION)
    assert all(abs(n - 900) < 100 for n in counts.values())


@pytest.mark.parametrize(
    ("population", "size", "message"),
    [(POPULATION, 0, "size"), (POPULATION, -1, "size"), ([], 3, "empty")],
    ids=["size-0", "size-negative", "empty-population"],
)
def test_sample_fixed_rejects_bad_input_without_drawing(population, size: int, message: str):
    # Prepare
    rng = np.random.default_rng(0)
    before = _rng_state(rng)
    # Execute
    with pytest.raises(ValueError, match=message):
        sample_fixed(population, size, rng)
    # Assert
    assert _rng_state(rng) == before


# --- sample_poisson ---------------------------------------------------------------------


def test_sample_poisson_may_return_an_empty_cohort():
    assert sample_poisson(POPULATION, 1e-9, np.random.default_rng(0)) == ()
    assert sample_poisson([], 0.5, np.random.default_rng(0)) == ()


def test_sample_poisson_with_rate_one_takes_everyone_sorted():
    assert sample_poisson(["b", "c", "a"], 1.0, np.random.default_rng(0)) == ("a", "b", "c")


def test_sample_poisson_mean_cohort_size_is_rate_times_population():
    # Prepare: N = 100, q = 0.1 -> mean 10; the mean of 2000 draws has sd about 0.07
    population = [f"c{i:03d}" for i in range(100)]
    rng = np.random.default_rng(2)
    # Execute
    sizes = [len(sample_poisson(population, 0.1, rng)) for _ in range(2000)]
    # Assert
    assert abs(np.mean(sizes) - 10) < 0.5
    assert abs(np.var(sizes) - 9) < 1.5  # binomial variance N q (1 - q)
    assert min(sizes) < 10 < max(sizes)


def test_sample_poisson_returns_sorted_distinct_members_deterministically():
    # Execute
    first = sample_poisson(POPULATION, 0.5, np.random.default_rng(3))
    again = sample_poisson(POPULATION, 0.5, np.random.default_rng(3))
    # Assert
    assert first == again
    assert list(first) == sorted(set(first))
    assert set(first) <= set(POPULATION)


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.0001, 2.0, float("nan")])
def test_sample_poisson_rejects_a_rate_outside_zero_one_without_drawing(rate: float):
    # Prepare
    rng = np.random.default_rng(0)
    before = _rng_state(rng)
    # Execute
    with pytest.raises(ValueError, match="rate"):
        sample_poisson(POPULATION, rate, rng)
    # Assert
    assert _rng_state(rng) == before
