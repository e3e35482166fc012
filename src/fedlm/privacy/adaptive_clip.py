"""Adaptive clipping: move the clip norm toward a target quantile of the update norms.

Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially Private Learning with
Adaptive Clipping" (arXiv:1905.03871). Each client reports whether its update went
unclipped; the server sees only the noised count of the centred bits,
b = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / n + 1/2 (centring gives the count sensitivity
1/2 under add/remove-one, which the cost formula assumes), and sets
C <- C * exp(-lr * (b - gamma)). The count's privacy cost is folded into the round's
noise multiplier (`accountant.update_noise_for`), so the ledger stays one Gaussian a round.
"""

from __future__ import annotations

import math

from fedlm.privacy.noise import secure_gaussian


def default_count_noise(expected_cohort: float) -> float:
    """Andrew et al.'s suggestion: sigma_b = expected cohort / 20."""
    return max(expected_cohort / 20.0, 1e-3)


def next_clip_norm(
    clip_norm: float, unclipped: int, *, arrived: int, expected_cohort: float, target_quantile: float,
    lr: float, count_std: float,
) -> tuple[float, float]:
    """(new clip norm, the noised unclipped fraction the server saw)."""
    if expected_cohort <= 0:
        raise ValueError("expected cohort must be > 0")
    if not 0 <= unclipped <= arrived:
        raise ValueError(f"{unclipped} unclipped of {arrived} arrivals")
    centred = unclipped - arrived / 2 + (float(secure_gaussian(1, count_std)[0]) if count_std > 0 else 0.0)
    fraction = centred / expected_cohort + 0.5
    return clip_norm * math.exp(-lr * (fraction - target_quantile)), fraction
