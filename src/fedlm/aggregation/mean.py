"""Weighted FedAvg: fold updates into a running weighted sum, then divide once.

McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", arXiv:1602.05629. Updates are folded into a preallocated
accumulator as they arrive, so the server never holds the cohort's N vectors at once.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.blas import saxpy

WEIGHTINGS = ("samples", "uniform")


def client_weight(num_samples: int, weighting: str, max_weight: float = 0.0) -> float:
    """A client's weight in the mean: 1, or its sample count capped at `max_weight` (0 = no cap).

    The cap bounds what one client can buy with a large (or a false) sample count: its share
    of the round is at most max_weight / (max_weight + the others' weights).
    """
    if weighting == "uniform":
        return 1.0
    if weighting == "samples":
        return float(min(num_samples, max_weight)) if max_weight > 0 else float(num_samples)
    raise ValueError(f"unknown weighting {weighting!r}; known: {WEIGHTINGS}")


def largest_share(weights: dict[str, float]) -> tuple[str, float]:
    """The client with the largest weight and its share of the round's total weight ("", 0.0 if none)."""
    if not weights:
        return "", 0.0
    who = max(sorted(weights), key=lambda c: weights[c])
    total = sum(weights.values())
    return who, weights[who] / total if total > 0 else 0.0


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
