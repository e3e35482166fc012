"""Each DP round's signal-to-noise ratio, measured on what the round released: is the noise swamping the signal?

The released mean m = s + n carries Gaussian noise n with a known per-coordinate std sigma
(z C / n_expected for the central mechanism of DP-FedAvg, McMahan et al. 2018; under
distributed placement the shares that arrived sum to the same z C scaled by
sqrt(arrived / n_expected)). Over P coordinates E|m|^2 = |s|^2 + sigma^2 P, so
|s| ~ sqrt(max(|m|^2 - sigma^2 P, 0)), and the ratio of that to the expected noise norm
sigma sqrt(P) is the round's signal-to-noise ratio, the figure `fedlm privacy plan` predicts
before a run. It reads only the released (noised) mean, so it is post-processing of the DP
output and costs no privacy.
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
