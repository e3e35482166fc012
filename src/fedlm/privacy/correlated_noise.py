"""The round noise of banded matrix-factorization DP-FTRL, streamed: b - 1 past noise vectors of state.

Banded MF-DP-FTRL (Choquette-Choo et al. 2023, arXiv:2306.08153; fedlm.privacy.banded) releases
C x + s sigma Z for the b-banded lower-triangular Toeplitz C; the model is its post-processing
C^-1 (C x + s sigma Z) = x + s sigma C^-1 Z, so round t's summed update carries s sigma w_t with
w = C^-1 Z, by forward substitution:

    w_t = (z_t - sum_{k=1}^{b-1} c_k w_{t-k}) / c_0.

z_t is a fresh standard normal vector from the secure source (fedlm.privacy.noise); the server
keeps only w_{t-1}, ..., w_{t-b+1} (ServerState.noise_state, checkpointed with the run). They are
secret: anyone holding them could subtract part of the next round's noise, so they live only in
the server's state and its checkpoint, never in metrics or logs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedlm.privacy.noise import secure_gaussian


def next_noise(coefficients: Sequence[float], history: Sequence[np.ndarray], normals: np.ndarray) -> np.ndarray:
    """w_t from z_t (`normals`) and the history (w_{t-1}, w_{t-2}, ..., at most b - 1 of them, newest first); float64."""
    coefficients = np.asarray(coefficients, dtype=np.float64)
    if len(history) > coefficients.size - 1:
        raise ValueError(f"a {coefficients.size}-banded factor keeps {coefficients.size - 1} past noise vectors, "
                         f"got {len(history)}")
    noise = np.asarray(normals, dtype=np.float64).copy()
    for c, past in zip(coefficients[1:], history):
        if past.shape != noise.shape:
            raise ValueError(f"the noise state has shape {past.shape}, the round's vector {noise.shape}")
        noise -= c * past
    return noise / coefficients[0]


def keep_history(coefficients: Sequence[float], history: Sequence[np.ndarray], noise: np.ndarray) -> tuple[np.ndarray, ...]:
    """The state after round t: (w_t, w_{t-1}, ...), the b - 1 newest, in float32."""
    kept = (noise.astype(np.float32),) + tuple(history)
    return kept[: len(coefficients) - 1]


def round_noise(
    coefficients: Sequence[float], history: Sequence[np.ndarray], size: int, std: float,
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """(std * w_t as float32, the new history) with z_t drawn from the secure source."""
    noise = next_noise(coefficients, history, secure_gaussian(size, 1.0))
    return (std * noise).astype(np.float32), keep_history(coefficients, history, noise)
