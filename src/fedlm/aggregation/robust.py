"""Byzantine-robust aggregation: statistics of a cohort's updates that a few bad ones cannot steer.

- coordinate_median, trimmed_mean: Yin et al. 2018, "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates", arXiv:1803.01498.
- krum, multi_krum: Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent" (NeurIPS).
- bound_norm: Sun et al. 2019, "Can You Really Backdoor Federated Learning?", arXiv:1911.07963.

Unlike FedAvg these need every update at once, so they take the cohort stacked as
updates [N, P] float32 and return float32. They are unweighted by design: the number
of samples is reported by the client, so weighting by it would let an attacker buy
influence by claiming a large dataset; here each client counts once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

ROBUST_AGGREGATORS = ("median", "trimmed_mean", "krum", "multi_krum")

# Work on column blocks of about this many elements (4 MB of float32, 8 MB of float64),
# so temporaries stay small however large P is.
_BLOCK_ELEMENTS = 1 << 20


def _check_updates(updates: object) -> None:
    if not isinstance(updates, np.ndarray) or updates.dtype != np.float32 or updates.ndim != 2:
        raise ValueError("updates must be a 2-D float32 numpy array [N, P]")
    if updates.shape[0] < 1:
        raise ValueError("updates must hold at least one update (N >= 1)")


def _check_count(name: str, value: object, low: int, high: int | None = None) -> int:
    in_range = isinstance(value, int | np.integer) and low <= value and (high is None or value <= high)
    if isinstance(value, bool) or not in_range:
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")
    return int(value)


def _sorted_blocks(updates: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """(columns, block [b, N]) with each coordinate's N values sorted along a row."""
    n, p = updates.shape
    width = max(1, _BLOCK_ELEMENTS // n)
    buffer = np.empty((width, n), np.float32)
    for start in range(0, p, width):
        cols = slice(start, min(start + width, p))
        block = buffer[: cols.stop - start]
        np.copyto(block, updates[:, cols].T)  # contiguous rows sort several times faster
        if not np.isfinite(block).all():
            raise ValueError("updates contain non-finite values")
        block.sort(axis=1)
        yield cols, block


def coordinate_median(updates: np.ndarray) -> np.ndarray:
    """Median of each coordinate over the N updates: [N, P] -> [P]."""
    _check_updates(updates)
    n = updates.shape[0]
    low, high = (n - 1) // 2, n // 2
    out = np.empty(updates.shape[1], np.float32)
    for cols, block in _sorted_blocks(updates):
        if low == high:
            out[cols] = block[:, low]
        else:  # halves first, so that two large values cannot overflow
            np.multiply(block[:, low], np.float32(0.5), out=out[cols])
            out[cols] += block[:, high] * np.float32(0.5)
    return out


def trim_count(trim_fraction: float, n: int) -> int:
    """How many values trimmed_mean drops at each end: floor(trim_fraction * n)."""
    # The small slack makes 0.29 * 100 trim 29, not 28 (0.29 is stored a hair below).
    return min(math.floor(trim_fraction * n + 1e-9), (n - 1) // 2)


def trimmed_mean(updates: np.ndarray, *, trim_fraction: float) -> np.ndarray:
    """Per coordinate, the mean after dropping the floor(trim_fraction * N) largest and smallest."""
    _check_updates(updates)
    is_real = isinstance(trim_fraction, int | float | np.floating) and not isinstance(trim_fraction, bool)
    if not is_real or not 0 <= trim_fraction < 0.5:  # NaN fails the comparison too
        raise ValueError(f"trim_fraction must be a number in [0, 0.5), got {trim_fraction!r}")
    n = updates.shape[0]
    k = trim_count(trim_fraction, n)
    out = np.empty(updates.shape[1], np.float32)
    for cols, block in _sorted_blocks(updates):
        out[cols] = block[:, k : n - k].mean(axis=1, dtype=np.float64)
    return out


def _gram(updates: np.ndarray) -> np.ndarray:
    """updates @ updates.T in float64, one column block at a time: [N, N]."""
    n, p = updates.shape
    width = max(1, _BLOCK_ELEMENTS // n)
    buffer = np.empty((n, width), np.float64)
    gram = np.zeros((n, n), np.float64)
    for start in range(0, p, width):
        block = buffer[:, : min(width, p - start)]
        np.copyto(block, updates[:, start : start + width])
        gram += block @ block.T
    return gram


def pairwise_sq_distances(updates: np.ndarray) -> np.ndarray:
    """Squared L2 distances between all pairs of updates, [N, N] float64, via the Gram matrix.

    ||a||^2 + ||b||^2 - 2 a.b costs one pass over the data (N=100, P=1e6 is 1e10 flops
    of BLAS) instead of N^2 passes; float64 keeps the cancellation between near-equal
    updates small, and tiny negative results of that cancellation are clamped to 0.
    """
    _check_updates(updates)
    gram = _gram(updates)
    norms = np.diag(gram).copy()
    if not np.isfinite(norms).all():  # a NaN or inf anywhere in a row shows up in its norm
        raise ValueError("updates contain non-finite values")
    distances = norms[:, None] + norms[None, :]
    distances -= 2.0 * gram
    np.maximum(distances, 0.0, out=distances)
    np.fill_diagonal(distances, 0.0)
    return distances


def _check_byzantine(n: int, num_byzantine: object) -> int:
    f = _check_count("num_byzantine", num_byzantine, 0)
    if n < 2 * f + 3:
        raise ValueError(f"Krum needs N >= 2 * num_byzantine + 3 = {2 * f + 3}; got N = {n}")
    return f


def _scores(updates: np.ndarray, f: int) -> np.ndarray:
    """Krum scores in float64 (arguments already checked)."""
    neighbours = updates.shape[0] - f - 2
    distances = pairwise_sq_distances(updates)
    np.fill_diagonal(distances, np.inf)  # a point is not its own neighbour
    nearest = np.partition(distances, neighbours - 1, axis=1)[:, :neighbours]
    return nearest.sum(axis=1)


def krum_scores(updates: np.ndarray, *, num_byzantine: int) -> np.ndarray:
    """Krum score of each update: the sum of squared distances to its N - f - 2 nearest others.

    Requires N >= 2f + 3 (f = num_byzantine), so that every update has at least one
    neighbour and honest ones outnumber the attackers among the neighbours.
    """
    _check_updates(updates)
    f = _check_byzantine(updates.shape[0], num_byzantine)
    return _scores(updates, f).astype(np.float32)


def multi_krum(updates: np.ndarray, *, num_byzantine: int, num_selected: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the num_selected updates of lowest Krum score, and their indices (ascending).

    num_selected = 1 is Krum. At most N - num_byzantine may be selected: beyond that the
    selection would have to include updates that may be attackers'. Ties go to the
    lower index, so the result is deterministic.
    """
    _check_updates(updates)
    n = updates.shape[0]
    f = _check_byzantine(n, num_byzantine)
    m = _check_count("num_selected", num_selected, 1, n - f)
    scores = _scores(updates, f)  # float64: no ties made by rounding to float32
    chosen = np.sort(np.argsort(scores, kind="stable")[:m])
    total = np.zeros(updates.shape[1], np.float64)
    for i in chosen:
        total += updates[i]
    total /= m
    return total.astype(np.float32), chosen


def krum(updates: np.ndarray, *, num_byzantine: int) -> tuple[np.ndarray, np.ndarray]:
    """The single update of lowest Krum score (a copy), and its index as a 1-element array."""
    return multi_krum(updates, num_byzantine=num_byzantine, num_selected=1)


def l2_norm(vector: np.ndarray) -> float:
    # einsum accumulates in float64 through a small buffer: no float64 copy of the vector
    return math.sqrt(float(np.einsum("i,i->", vector, vector, dtype=np.float64)))


def bound_norm(
    vector: np.ndarray, *, max_norm: float, out: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Scale vector so that its L2 norm is at most max_norm: (bounded vector, original norm).

    A vector within the bound is copied as it is (so the all-zero vector stays zero and
    nothing is divided by zero). The result goes into out when given, which may be the
    vector itself; nothing is written when the input is refused.
    """
    if not isinstance(vector, np.ndarray) or vector.dtype != np.float32 or vector.ndim != 1:
        raise ValueError("vector must be a 1-D float32 numpy array")
    is_real = isinstance(max_norm, int | float | np.floating | np.integer) and not isinstance(max_norm, bool)
    if not is_real or not math.isfinite(max_norm) or max_norm <= 0:
        raise ValueError(f"max_norm must be a finite number > 0, got {max_norm!r}")
    if out is not None:
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != vector.shape:
            raise ValueError(f"out must be a float32 numpy array of shape {vector.shape}")
        if not out.flags.writeable:
            raise ValueError("out is read-only")
    norm = l2_norm(vector)
    if not math.isfinite(norm):
        raise ValueError("vector contains non-finite values")
    if out is None:
        out = np.empty_like(vector)
    if norm <= max_norm:
        if out is not vector:
            np.copyto(out, vector)
        return out, norm
    # Shrink the factor by 2^-22 (four float32 half-ulps): rounding the factor to float32
    # and rounding each product can then not push the result's norm past max_norm.
    scale = np.float32(max_norm / norm * (1.0 - 2.0**-22))
    np.multiply(vector, scale, out=out)
    return out, norm
