"""Weighted FedAvg: fold updates into a running weighted sum, then divide once.

McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", arXiv:1602.05629. Updates are folded into a preallocated
accumulator as they arrive, so the server never holds the cohort's N vectors at once.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.blas import saxpy

WEIGHTINGS = ("samples", "uniform")


def client_weight(num_samples: int, weighting: str) -> float:
    if weighting == "uniform":
        return 1.0
    if weighting == "samples":
        return float(num_samples)
    raise ValueError(f"unknown weighting {weighting!r}; known: {WEIGHTINGS}")


def fold(total: np.ndarray, update: np.ndarray, weight: float) -> None:
    """total += weight * update in one pass, in place (BLAS saxpy: no temporary, one read of each)."""
    if total.dtype != np.float32 or not total.flags.c_contiguous or update.shape != total.shape:
        raise ValueError("fold needs a contiguous float32 total and an update of the same shape")
    result = saxpy(np.ascontiguousarray(update, dtype=np.float32), total, a=float(weight))
    if result is not total:  # BLAS worked on a copy; never expected for contiguous float32
        np.copyto(total, result)


def weighted_mean(total: np.ndarray, weight_sum: float) -> np.ndarray:
    if weight_sum <= 0:
        raise ValueError("the weights of the folded updates sum to zero")
    return total / np.float32(weight_sum)
