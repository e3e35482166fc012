"""Banded Toeplitz matrix factorization for DP-FTRL: sensitivity, error on prefix sums, correlated noise.

Matrix-factorization DP-FTRL (Denisov, McMahan, Rush, Smith, Thakurta 2022, arXiv:2202.08312;
banded: Choquette-Choo, Ganesh, McKenna, McMahan, Rush, Thakurta, Xu 2023, "(Amplified) Banded
Matrix Factorization: A unified approach to private training", arXiv:2306.08153). The model after
round t is the prefix sum of the rounds' summed updates x: the workload is A (T x T, ones on and
below the diagonal). Factor A = B C with C lower-triangular; the server releases C x + s sigma Z
(Z standard normal, s the sensitivity of C), and the model uses B (C x + s sigma Z) = A x + s sigma
B Z: each round's update carries the correlated noise s sigma (C^-1 Z)_t. Noise std s sigma on the
whole release C x is one Gaussian mechanism: mu-GDP with mu = 1/sigma (lower-triangular C keeps this
under adaptively chosen x, as Denisov et al. 2022 show).

Here C is b-banded Toeplitz: C[t, t-i] = c_i for 0 <= i < b, c_0 = 1. Participation is cyclic:
the clients are split into `separation` >= b fixed groups and group (t mod separation) trains in round
t, so a client takes part at most once every `separation` rounds. Two columns of C at least b apart
have disjoint supports, so a client's contributions add in quadrature and the sensitivity is exact:
s^2 = max over groups of the sum of its columns' squared norms (Choquette-Choo et al. 2023: a b-banded
C under b-min-separated participation).
With b = 1, C = I and separation 1 (every client every round), s = sqrt(T): DP-SGD's noise.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, signal


def check_coefficients(coefficients: np.ndarray, rounds: int) -> np.ndarray:
    """A 1-D float vector c with c_0 != 0 and at most `rounds` entries (C is invertible and fits T x T)."""
    coefficients = np.asarray(coefficients, dtype=np.float64)
    if coefficients.ndim != 1 or not 1 <= coefficients.size <= rounds:
        raise ValueError(
            f"coefficients must be a vector of 1 to rounds={rounds} values, got shape {coefficients.shape}")
    if not np.all(np.isfinite(coefficients)) or coefficients[0] == 0:
        raise ValueError("coefficients must be finite with a nonzero first entry (C must be invertible)")
    return coefficients


def toeplitz_matrix(coefficients: np.ndarray, rounds: int) -> np.ndarray:
    """C: T x T lower-triangular, C[t, t - i] = coefficients[i]."""
    coefficients = check_coefficients(coefficients, rounds)
    return sum(value * np.eye(rounds, k=-i) for i, value in enumerate(coefficients))


def inverse_coefficients(coefficients: np.ndarray, rounds: int) -> np.ndarray:
    """The first column of C^-1 (C^-1 is lower-triangular Toeplitz too): the series 1 / c(x) to T terms."""
    coefficients = check_coefficients(coefficients, rounds)
    impulse = np.zeros(rounds)
    impulse[0] = 1.0
    return signal.lfilter([1.0], coefficients, impulse)


def prefix_sum_error(coefficients: np.ndarray, rounds: int) -> float:
    """||A C^-1||_F^2: total squared noise on all T prefix sums per coordinate, per unit of noise std.

    A C^-1 is lower-triangular Toeplitz with first column beta = cumsum(first column of C^-1);
    entry beta_i appears T - i times.
    """
    beta = np.cumsum(inverse_coefficients(coefficients, rounds))
    return float(np.sum((rounds - np.arange(rounds)) * beta**2))


def independent_error(rounds: int) -> float:
    """||A||_F^2 = T (T + 1) / 2: C = I, independent noise every round."""
    return rounds * (rounds + 1) / 2


def participations(rounds: int, separation: int, group: int = 0) -> np.ndarray:
    """The rounds in which `group` of `separation` cyclic groups trains: group, group + separation, ..."""
    return np.arange(group, rounds, separation)


def cyclic_sensitivity(coefficients: np.ndarray, rounds: int, separation: int) -> float:
    """s: the largest norm by which one client (clip norm 1) can move C x under cyclic participation.

    Needs b <= separation: then the client's columns of C have disjoint supports and
    s^2 = max over groups of sum of ||C[:, t]||^2 over its rounds t (Choquette-Choo et al. 2023).
    """
    coefficients = check_coefficients(coefficients, rounds)
    if not 1 <= separation <= rounds:
        raise ValueError(f"separation must be in [1, rounds={rounds}], got {separation}")
    if coefficients.size > separation:
        raise ValueError(f"a {coefficients.size}-banded C needs clients at least {coefficients.size} rounds apart, "
                         f"got separation {separation}")
    squared = np.cumsum(coefficients**2)
    kept = np.minimum(coefficients.size, rounds - np.arange(rounds))  # column t keeps min(b, T - t) entries
    column_norms = squared[kept - 1]
    return math.sqrt(max(column_norms[participations(rounds, separation, g)].sum() for g in range(separation)))


def square_root_coefficients(bands: int) -> np.ndarray:
    """The first `bands` coefficients of A^(1/2) = (1 - x)^(-1/2): binom(2k, k) / 4^k.

    The square-root factorization (Fichtenberger, Henzinger, Upadhyay 2023, arXiv:2202.11205),
    truncated: the optimizer's starting point.
    """
    coefficients = np.ones(bands)
    for k in range(1, bands):
        coefficients[k] = coefficients[k - 1] * (2 * k - 1) / (2 * k)
    return coefficients


def banded_objective(coefficients: np.ndarray, rounds: int, separation: int) -> float:
    """s^2 ||A C^-1||_F^2: the expected total squared error on the prefix sums at unit mu (scale-free in c)."""
    return cyclic_sensitivity(coefficients, rounds, separation) ** 2 * prefix_sum_error(coefficients, rounds)


def optimal_banded_coefficients(rounds: int, bands: int) -> np.ndarray:
    """The b-banded Toeplitz C (c_0 = 1) minimizing s^2 ||A C^-1||_F^2 at separation b, by L-BFGS.

    Starts from the truncated square-root factorization and keeps the better of the result and
    C = I, so the error is never above independent noise; the minimum is local (any C found is
    still an exact, valid mechanism: only its optimality is numerical).
    """
    if not 1 <= bands <= rounds:
        raise ValueError(f"bands must be in [1, rounds={rounds}], got {bands}")
    identity = np.ones(1)
    if bands == 1:
        return identity

    def loss(tail: np.ndarray) -> tuple[float, np.ndarray]:
        return _objective_and_gradient(np.concatenate([[1.0], tail]), rounds, bands)

    start = square_root_coefficients(bands)
    result = optimize.minimize(loss, start[1:], jac=True, method="L-BFGS-B")
    best = np.concatenate([[1.0], result.x])
    candidates = [best, start, identity]
    return min(candidates, key=lambda c: banded_objective(c, rounds, bands))


def _objective_and_gradient(coefficients: np.ndarray, rounds: int, bands: int) -> tuple[float, np.ndarray]:
    """f = S E, S = sum_i n_i c_i^2 (n_i: group 0's columns that keep entry i), E = sum_n w_n beta_n^2.

    With d = 1/c(x), dd/dc_j = -(d * d) shifted by j; beta = cumsum(d), so dbeta_n/dc_j = -D_{n-j}
    with D = cumsum(d * d); dE/dc_j = -2 sum_n w_n beta_n D_{n-j}. Gradient w.r.t. c_1..c_{b-1}.
    """
    inverse = inverse_coefficients(coefficients, rounds)
    beta = np.cumsum(inverse)
    weights = rounds - np.arange(rounds)
    error = float(np.sum(weights * beta**2))
    columns = participations(rounds, bands)
    counts = np.array([np.sum(rounds - columns > i) for i in range(bands)])
    sensitivity_sq = float(np.sum(counts * coefficients**2))
    if not math.isfinite(error) or error > 1e150:
        return 1e150, np.zeros(bands - 1)
    kernel = np.cumsum(signal.fftconvolve(inverse, inverse)[:rounds])
    weighted = weights * beta
    d_error = np.array([-2.0 * np.dot(weighted[j:], kernel[: rounds - j]) for j in range(1, bands)])
    d_sensitivity = 2.0 * counts[1:] * coefficients[1:]
    return sensitivity_sq * error, d_sensitivity * error + sensitivity_sq * d_error


def correlated_noise(coefficients: np.ndarray, standard_normals: np.ndarray) -> np.ndarray:
    """C^-1 Z for Z of shape (T, P): row t is the noise round t's update carries (times s sigma).

    Forward substitution, c_0 w_t = z_t - sum_{i>=1} c_i w_{t-i}: a round needs only the last
    b - 1 noise rows, so a run can stream it.
    """
    standard_normals = np.asarray(standard_normals, dtype=np.float64)
    coefficients = check_coefficients(coefficients, standard_normals.shape[0])
    return signal.lfilter([1.0], coefficients, standard_normals, axis=0)
