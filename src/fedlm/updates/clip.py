"""L2 clipping of one update, in place; an all-zero update stays zero (no division by zero).

Per-update clipping bounds each client's influence on the sum: the sensitivity that DP
noise is calibrated to (McMahan et al. 2018, arXiv:1710.06963) and a first defence
against one oversized update.
"""

from __future__ import annotations

import numpy as np


def l2_norm(vector: np.ndarray) -> float:
    """The L2 norm, accumulated in float64 so a 1e7-long float32 vector loses nothing."""
    wide = vector.astype(np.float64)
    return float(np.sqrt(wide @ wide))


def clip_in_place(vector: np.ndarray, clip_norm: float) -> float:
    """Scale `vector` so its L2 norm is at most `clip_norm`; return the norm before clipping."""
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    norm = l2_norm(vector)
    if norm > clip_norm:
        vector *= np.float32(clip_norm / norm)
    return norm
