"""L2 clipping of one update on the client, in place.

Per-update clipping bounds each client's influence on the sum: the sensitivity that DP
noise is calibrated to (McMahan et al. 2018, arXiv:1710.06963) and a first defence
against one oversized update. It is the same operation as the server's norm bounding,
so both use `aggregation.robust.bound_norm`: an all-zero update stays zero, and the
result's norm never exceeds the bound, float32 rounding included.
"""

from __future__ import annotations

import numpy as np

from fedlm.aggregation.robust import bound_norm


def clip_in_place(vector: np.ndarray, clip_norm: float) -> float:
    """Scale `vector` so its L2 norm is at most `clip_norm`; return the norm before clipping."""
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    _, norm = bound_norm(vector, max_norm=clip_norm, out=vector)
    return norm
