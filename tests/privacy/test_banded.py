"""Tests of banded matrix factorization: sensitivity by hand, error on prefix sums, correlated noise."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import optimize

from fedlm.privacy.banded import (
    banded_objective,
    correlated_noise,
    cyclic_sensitivity,
    independent_error,
    inverse_coefficients,
    optimal_banded_coefficients,
    prefix_sum_error,
    square_root_coefficients,
    toeplitz_matrix,
)

TINY = np.array([1.0, 0.5])  # T = 4, b = 2


def test_tiny_case_by_hand():
    # Prepare, by hand for T = 4, b = 2, C[t, t] = 1, C[t + 1, t] = 0.5, groups {0, 2} and {1, 3}:
    # columns 0-2 have squared norm 1.25, column 3 has 1; group {0, 2}: s^2 = 2.5, group {1, 3}: 2.25.
    # C^-1 has first column (1, -0.5, 0.25, -0.125); A C^-1's is its cumsum (1, 0.5, 0.75, 0.625), each
    # entry i on T - i diagonals: ||A C^-1||_F^2 = 4 + 3 (0.25) + 2 (0.5625) + 0.390625 = 6.265625.
    # Execute
    matrix = toeplitz_matrix(TINY, 4)
    sensitivity = cyclic_sensitivity(TINY, 4, 2)
    error = prefix_sum_error(TINY, 4)
    # Assert
    np.testing.assert_array_equal(matrix, [[1, 0, 0, 0], [0.5, 1, 0, 0], [0, 0.5, 1, 0], [0, 0, 0.5, 1]])
    assert sensitivity == pytest.approx(np.sqrt(2.5), rel=1e-15)
    assert error == pytest.approx(6.265625, rel=1e-15)
    assert banded_objective(TINY, 4, 2) == pytest.approx(2.5 * 6.265625, rel=1e-15)


def test_sensitivity_is_the_worst_case_over_every_client_and_every_contribution():
    # Prepare: T = 6, b = 3; a client of group g contributes u_t (|u_t| <= 1) in its rounds g, g + 3.
    # With disjoint supports, ||sum_t C[:, t] u_t|| is largest at |u_t| = 1 whatever the signs.
    coefficients, rounds, separation = np.array([1.0, -0.6, 0.3]), 6, 3
    matrix = toeplitz_matrix(coefficients, rounds)
    gram = matrix.T @ matrix
    worst = 0.0
    for group in range(separation):
        rounds_in = list(range(group, rounds, separation))
        for signs in itertools.product((-1.0, 1.0), repeat=len(rounds_in)):
            worst = max(worst, np.linalg.norm(matrix[:, rounds_in] @ np.array(signs)))
    # Execute
    sensitivity = cyclic_sensitivity(coefficients, rounds, separation)
    # Assert: columns b apart are orthogonal, and the formula is the brute-force worst case
    assert all(gram[s, t] == 0 for s in range(rounds) for t in range(rounds) if abs(s - t) >= separation)
    assert sensitivity == pytest.approx(worst, rel=1e-12)


def test_a_band_wider_than_the_separation_is_refused():
    # columns 2 apart would overlap: the disjoint-support formula would understate the sensitivity
    with pytest.raises(ValueError, match="at least 3 rounds apart"):
        cyclic_sensitivity(np.array([1.0, 0.5, 0.2]), 6, 2)


def test_one_band_is_independent_noise():
    # Prepare
    rounds = 7
    # Execute / Assert: C = I: sensitivity sqrt(T) with every client every round, error T (T + 1) / 2
    assert cyclic_sensitivity(np.ones(1), rounds, 1) == pytest.approx(np.sqrt(rounds), rel=1e-15)
    assert prefix_sum_error(np.ones(1), rounds) == independent_error(rounds) == 28
    np.testing.assert_array_equal(optimal_banded_coefficients(rounds, 1), [1.0])


@pytest.mark.parametrize("coefficients", [[2.0], [1.0, 0.5], [1.0, -0.3, 0.2, 0.1], list(square_root_coefficients(5))])
def test_inverse_and_error_match_dense_matrices(coefficients: list[float]):
    # Prepare
    rounds = 9
    matrix = toeplitz_matrix(np.array(coefficients), rounds)
    workload = np.tri(rounds)
    # Execute / Assert
    np.testing.assert_allclose(inverse_coefficients(np.array(coefficients), rounds), np.linalg.inv(matrix)[:, 0],
                               rtol=1e-12, atol=1e-14)
    assert prefix_sum_error(np.array(coefficients), rounds) == pytest.approx(
        np.linalg.norm(workload @ np.linalg.inv(matrix), "fro") ** 2, rel=1e-12)


def test_correlated_noise_is_c_inverse_times_z():
    # Prepare
    rng = np.random.default_rng(7)
    coefficients = np.array([1.0, 0.55, 0.3])
    normals = rng.standard_normal((10, 4))  # T = 10 rounds, P = 4 coordinates
    matrix = toeplitz_matrix(coefficients, 10)
    # Execute
    noise = correlated_noise(coefficients, normals)
    # Assert: C^-1 Z by a dense solve; the prefix sums of the noise are (A C^-1) Z
    np.testing.assert_allclose(noise, np.linalg.solve(matrix, normals), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.cumsum(noise, axis=0), np.tri(10) @ np.linalg.inv(matrix) @ normals, atol=1e-12)


def test_correlated_noise_has_the_predicted_error_on_prefix_sums():
    # Prepare: 20,000 seeded draws of T = 6 rounds
    rng = np.random.default_rng(11)
    coefficients = optimal_banded_coefficients(6, 3)
    normals = rng.standard_normal((6, 20_000))
    # Execute
    prefix_noise = np.cumsum(correlated_noise(coefficients, normals), axis=0)
    # Assert: mean total squared error over the draws within 3 % of ||A C^-1||_F^2 (its std here is about 1 %)
    assert np.mean(np.sum(prefix_noise**2, axis=0)) == pytest.approx(prefix_sum_error(coefficients, 6), rel=0.03)


def test_tiny_optimum_matches_a_one_dimensional_search():
    # Prepare: for T = 4, b = 2 the only free coefficient is c_1
    best = optimize.minimize_scalar(lambda c1: banded_objective(np.array([1.0, c1]), 4, 2), bounds=(-0.9, 0.9),
                                    method="bounded", options={"xatol": 1e-10})
    # Execute
    coefficients = optimal_banded_coefficients(4, 2)
    # Assert: c_1 = 0.4307 gives 15.571, below the hand case's 15.664 at c_1 = 0.5 and 20 for C = I
    assert coefficients[1] == pytest.approx(best.x, abs=1e-5)
    assert banded_objective(coefficients, 4, 2) == pytest.approx(best.fun, rel=1e-9)
    assert banded_objective(coefficients, 4, 2) < banded_objective(TINY, 4, 2) < 2 * independent_error(4)


@pytest.mark.parametrize(("rounds", "bands"), [(12, 3), (30, 6)])
def test_optimizer_gradient_reaches_what_a_gradient_free_search_finds(rounds: int, bands: int):
    # Prepare: Nelder-Mead, no gradient, from the square-root start
    start = square_root_coefficients(bands)
    reference = optimize.minimize(lambda tail: banded_objective(np.concatenate([[1.0], tail]), rounds, bands),
                                  start[1:], method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12,
                                                                            "maxiter": 20_000})
    # Execute
    coefficients = optimal_banded_coefficients(rounds, bands)
    # Assert
    assert banded_objective(coefficients, rounds, bands) <= reference.fun * (1 + 1e-6)
    assert banded_objective(coefficients, rounds, bands) < banded_objective(start, rounds, bands)


@pytest.mark.parametrize(("rounds", "bands"), [(10, 10), (100, 10), (1000, 100)])
def test_optimal_banded_error_never_exceeds_independent_noise(rounds: int, bands: int):
    # Execute
    coefficients = optimal_banded_coefficients(rounds, bands)
    # Assert: against C = I at the same participation (T / b participations, sensitivity^2 = ceil(T / b))
    participations = -(-rounds // bands)
    assert banded_objective(coefficients, rounds, bands) < participations * independent_error(rounds)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: toeplitz_matrix(np.array([0.0, 1.0]), 3), "nonzero first entry"),
        (lambda: toeplitz_matrix(np.array([1.0, np.nan]), 3), "finite"),
        (lambda: prefix_sum_error(np.ones(5), 3), "1 to rounds=3 values"),
        (lambda: cyclic_sensitivity(np.ones(1), 3, 0), "separation"),
        (lambda: optimal_banded_coefficients(3, 4), "bands"),
        (lambda: correlated_noise(np.ones(3), np.ones((2, 5))), "1 to rounds=2 values"),
    ],
)
def test_bad_input_is_refused(call, match: str):
    with pytest.raises(ValueError, match=match):
        call()
