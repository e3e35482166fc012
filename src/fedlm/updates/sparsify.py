"""Sparsification of an update: a shared random mask, or top-k with error feedback.

Random mask: every client of a round draws the same k coordinates from a shared seed,
so masked updates still add up coordinate by coordinate (secure aggregation sums them
without seeing them) and the indices never travel. Scaling the kept values by size / k,
the inverse of each coordinate's chance to be kept, makes the result unbiased over the
mask (Konecny et al. 2016, arXiv:1610.05492, "random mask" structured updates).

Top-k keeps each client's largest coordinates, so indices differ per client and must be
sent, and a client's dropped mass is lost unless it is fed back: error feedback adds the
residual of the previous round before choosing and keeps what was dropped (Stich et al.
2018, arXiv:1809.07599; Karimireddy et al. 2019, arXiv:1901.09847). Top-k does not
commute with summation, so it cannot run under secure aggregation.

k = max(1, round(fraction * size)) with Python's round (half to even), never above size.
"""

from __future__ import annotations

import numpy as np


def kept_count(size: int, *, fraction: float) -> int:
    """k: how many coordinates a mask or top-k keeps."""
    if not 0 < fraction <= 1:  # also refuses nan
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return min(size, max(1, round(fraction * size)))


def random_mask(size: int, *, fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 indices of the k kept coordinates, drawn without replacement from `seed`."""
    k = kept_count(size, fraction=fraction)
    chosen = np.random.default_rng(seed).choice(size, size=k, replace=False)
    return np.sort(chosen).astype(np.int64)


def random_sparsify_(vector: np.ndarray, *, fraction: float, seed: int) -> None:
    """In place: zero every coordinate outside the mask, scale the kept ones by size / k.

    size / k equals 1 / fraction whenever fraction * size is a whole number; otherwise it
    is the scale that keeps the result exactly unbiased.
    """
    mask = random_mask(vector.size, fraction=fraction, seed=seed)
    kept = vector[mask] * (vector.size / mask.size) if mask.size else vector[mask]
    vector[...] = 0
    vector[mask] = kept


def top_k(vector: np.ndarray, *, fraction: float) -> np.ndarray:
    """Sorted int64 indices of the k largest |values|."""
    k = kept_count(vector.size, fraction=fraction)
    if k == vector.size:
        return np.arange(k, dtype=np.int64)
    largest = np.argpartition(np.abs(vector), vector.size - k)[vector.size - k :]
    return np.sort(largest).astype(np.int64)


def top_k_with_feedback_(vector: np.ndarray, residual: np.ndarray, *, fraction: float) -> None:
    """Error feedback in place: vector += residual, keep its top k, residual <- the rest.

    After any number of calls, what was sent plus the residual equals the sum of the inputs:
    nothing is lost, only delayed.
    """
    kept_count(vector.size, fraction=fraction)  # validate before touching either array
    if residual.shape != vector.shape:
        raise ValueError(f"residual has shape {residual.shape}, the update {vector.shape}")
    vector += residual
    keep = top_k(vector, fraction=fraction)
    residual[...] = vector
    residual[keep] = 0
    vector -= residual
