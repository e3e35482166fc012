"""Weighted FedAvg: fold updates into a running weighted sum, then divide once.

McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", arXiv:1602.05629. Updates are folded into a preallocated
accumulator as they arrive, so the server never holds the cohort's N vectors at once.
"""

from __future__ import annotations

import numpy as np

WEIGHTINGS = ("samples", "uniform")


def client_weight(num_samples: int, weighting: str) -> float:
    if weighting == "uniform":
        return 1.0
    if weighting == "samples":
        return float(num_samples)
    raise ValueError(f"unknown weighting {weighting!r}; known: {WEIGHTINGS}")


def fold(total: np.ndarray, update: np.ndarray, weight: float, scratch: np.ndarray) -> None:
    """total += weight * update, without allocating (scratch is overwritten)."""
    np.multiply(update, np.float32(weight), out=scratch)
    np.add(total, scratch, out=total)


def weighted_mean(total: np.ndarray, weight_sum: float) -> np.ndarray:
    if weight_sum <= 0:
        raise ValueError("the weights of the folded updates sum to zero")
    return total / np.float32(weight_sum)
