"""Robust statistics of a handful of numbers: the median/MAD z-score and a five-number summary.

The robust z-score is Iglewicz & Hoaglin's modified z-score (1993, "How to Detect and Handle
Outliers"): (x - median) / (1.4826 * MAD), where 1.4826 * MAD estimates the standard deviation
of normal data while one wild value cannot move it. With a handful of values the MAD can be
near zero (five tiny-model updates of one round had norms within 4% of each other, MAD 0.5%),
and then any small difference reads as many z-scores; callers floor the scale at a share of
the median's size (`min_relative_scale`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD times this estimates sigma for normal data
QUANTILES = (("min", 0.0), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("max", 1.0))


def median_and_scale(sample: Sequence[float], *, min_relative_scale: float = 0.0) -> tuple[float, float]:
    """The median and the robust scale max(1.4826 * MAD, min_relative_scale * |median|) of a non-empty sample."""
    if len(sample) == 0:
        raise ValueError("a robust scale needs at least one value")
    values = np.asarray(sample, dtype=np.float64)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    return median, max(MAD_TO_SIGMA * mad, min_relative_scale * abs(median))


def robust_zscore(value: float, sample: Sequence[float], *, min_relative_scale: float = 0.0) -> float:
    """How many robust standard deviations `value` lies from the median of `sample` (signed).

    A zero scale (every value equal, no floor) gives 0 for the median itself and an infinite
    score for anything else.
    """
    median, scale = median_and_scale(sample, min_relative_scale=min_relative_scale)
    if scale > 0:
        return (value - median) / scale
    return 0.0 if value == median else math.copysign(math.inf, value - median)


def five_numbers(values: Sequence[float]) -> dict[str, float] | None:
    """min, q25, median, q75 and max (linear interpolation between order statistics); None for no values."""
    if len(values) == 0:
        return None
    points = np.quantile(np.asarray(values, dtype=np.float64), [q for _, q in QUANTILES])
    return {name: float(p) for (name, _), p in zip(QUANTILES, points, strict=True)}
