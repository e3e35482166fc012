"""Server update on the aggregated client delta.

FedAvg with a server learning rate (Reddi et al. 2021, "Adaptive Federated
Optimization", arXiv:2003.00295, Algorithm 1 with SGD): the pseudo-gradient is the
negated mean delta, so global_{t+1} = global_t + server_lr * mean_delta.
"""

from __future__ import annotations

import numpy as np


def server_sgd(global_vector: np.ndarray, mean_delta: np.ndarray, *, server_lr: float) -> np.ndarray:
    """A new global vector; the inputs are not modified."""
    if global_vector.shape != mean_delta.shape:
        raise ValueError(f"mean delta shape {mean_delta.shape} differs from the global {global_vector.shape}")
    out = mean_delta * np.float32(server_lr)
    out += global_vector
    return out
