"""Each DP round's signal-to-noise ratio, measured on what the round released: is the noise swamping the signal?

The released mean m = s + n carries Gaussian noise n with a known per-coordinate std sigma
(z C / n_expected for the central mechanism of DP-FedAvg, McMahan et al. 2018; under
distributed placement the shares that arrived sum to the same z C scaled by
sqrt(arrived / n_expected)). Over P coordinates E|m|^2 = |s|^2 + sigma^2 P, so
|s| ~ sqrt(max(|m|^2 - sigma^2 P, 0)), and the ratio of that to the expected noise norm
sigma sqrt(P) is the round's signal-to-noise ratio, the figure `fedlm privacy plan` predicts
before a run. It reads only the released (noised) mean, so it is post-processing of the DP
output and costs no privacy.

privacy.noise_aware_lr scales the round's step by the same estimate of the signal's share,
max(0, 1 - sigma^2 P / |m|^2): the positive-part James-Stein estimator of the mean under known
Gaussian noise (James & Stein 1961; Baranchik 1964), whose squared error is below that of m
itself for P >= 3. A round whose release is mostly noise moves the model little; one that is
mostly signal keeps its full step. Post-processing as well: no privacy cost.
"""

from __future__ import annotations

import math
from typing import Any


def noise_std_on_mean(plan: Any, noise_multiplier: float, clip_norm: float, arrived: int) -> float:
    """The per-coordinate noise std on the released mean (plan: fedlm.privacy.plan.PrivacyPlan)."""
    std = noise_multiplier * clip_norm / plan.expected_cohort
    if plan.placement == "distributed":
        std *= math.sqrt(max(arrived, 0) / plan.expected_cohort)
    return std


def round_signal_to_noise(released_norm: float, noise_std: float, size: int) -> dict[str, float | None]:
    """{"noise_norm": sigma sqrt(P), "signal_to_noise": the estimated |s| / noise_norm} (None without noise)."""
    noise_norm = noise_std * math.sqrt(size)
    if noise_norm <= 0 or not math.isfinite(released_norm):
        return {"noise_norm": noise_norm, "signal_to_noise": None}
    signal = math.sqrt(max(released_norm**2 - noise_norm**2, 0.0))
    return {"noise_norm": noise_norm, "signal_to_noise": signal / noise_norm}


def james_stein_factor(released_norm: float, noise_std: float, size: int) -> float:
    """max(0, 1 - noise_std^2 P / |m|^2): the positive-part James-Stein shrinkage of the released mean m."""
    if noise_std <= 0 or not math.isfinite(released_norm):
        return 1.0
    if released_norm <= 0:
        return 0.0
    return max(0.0, 1.0 - noise_std**2 * size / released_norm**2)
