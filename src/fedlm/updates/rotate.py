"""Randomized Hadamard rotation of an update, x -> H D x / sqrt(n), and its exact inverse.

Suresh et al. 2017 (arXiv:1611.00429): after a random rotation every coordinate is
about ||x|| / sqrt(n), so a quantizer's per-chunk scale max |x| falls towards the RMS and
its error with it. D is a +-1 diagonal drawn from a seed the server knows too; H is the
Sylvester-Hadamard matrix, which exists for powers of two only, so the vector is
zero-padded to n = the next power of two. H / sqrt(n) is orthogonal and its own inverse,
so the norm is kept and the inverse is exact up to rounding. The map is linear: rotating
each client's update and unrotating the sum gives the sum, which is why it can sit
before secure aggregation (TFF's `distributed_dp` rotates first for this reason).

The fast Walsh-Hadamard transform runs in O(n log n), in float64, one vectorised
butterfly per level.
"""

from __future__ import annotations

import numpy as np


def padded_size(size: int) -> int:
    """The next power of two >= size (1 for an empty vector)."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return 1 << max(size - 1, 0).bit_length()


def random_signs(n: int, *, seed: int) -> np.ndarray:
    """The diagonal of D: n float64 values, each +1 or -1, fixed by `seed`."""
    return np.where(np.random.default_rng(seed).random(n) < 0.5, -1.0, 1.0)


def hadamard(vector: np.ndarray) -> np.ndarray:
    """H x, unnormalised, for a float64 vector whose length is a power of two; `vector` is overwritten."""
    n = vector.size
    if n & (n - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two length, got {n}")
    spare = np.empty_like(vector)
    half = 1
    while half < n:
        source = vector.reshape(-1, 2, half)  # (blocks, 2, half): each block's two halves
        target = spare.reshape(-1, 2, half)
        np.add(source[:, 0], source[:, 1], out=target[:, 0])
        np.subtract(source[:, 0], source[:, 1], out=target[:, 1])
        vector, spare = spare, vector
        half *= 2
    return vector


def rotate(vector: np.ndarray, *, seed: int) -> np.ndarray:
    """H D x / sqrt(n) as float32, of length padded_size(len(vector))."""
    if vector.ndim != 1:
        raise ValueError(f"an update is one flat vector, got shape {vector.shape}")
    n = padded_size(vector.size)
    work = np.zeros(n, dtype=np.float64)
    work[: vector.size] = vector
    work *= random_signs(n, seed=seed)
    work = hadamard(work)
    work *= 1.0 / np.sqrt(n)
    return work.astype(np.float32)


def unrotate(rotated: np.ndarray, *, seed: int, size: int) -> np.ndarray:
    """D H y / sqrt(n), cut back to the first `size` values, as float32."""
    n = padded_size(size)
    if rotated.shape != (n,):
        raise ValueError(f"a rotated vector of {size} values has length {n}, got shape {rotated.shape}")
    work = hadamard(rotated.astype(np.float64))  # astype copies: the caller's array is untouched
    work *= random_signs(n, seed=seed) / np.sqrt(n)
    return work[:size].astype(np.float32)
