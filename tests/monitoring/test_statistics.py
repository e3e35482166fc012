"""Robust z-scores and the five-number summary, on numbers worked by hand."""

from __future__ import annotations

import math

import pytest

from fedlm.monitoring.statistics import MAD_TO_SIGMA, five_numbers, median_and_scale, robust_zscore


def test_robust_zscore_of_a_wild_value_uses_median_and_mad():
    # Prepare: median 3; absolute deviations 2, 1, 0, 1, 97 -> MAD 1, scale 1.4826
    sample = [1.0, 2.0, 3.0, 4.0, 100.0]
    # Execute
    wild, centre, low = (robust_zscore(x, sample) for x in (100.0, 3.0, 1.0))
    # Assert: the wild value does not widen the scale it is judged by (a standard z-score would give 2.0)
    assert median_and_scale(sample) == (3.0, MAD_TO_SIGMA)
    assert wild == pytest.approx(97 / 1.4826) and centre == 0.0 and low == pytest.approx(-2 / 1.4826)


def test_the_scale_floor_applies_when_the_mad_is_smaller():
    # Prepare: four equal values: MAD 0
    sample = [10.0, 10.0, 10.0, 10.0]
    # Execute / Assert: floored at 10% of the median, 12 is two scales above; unfloored, any change is infinite
    assert robust_zscore(12.0, sample, min_relative_scale=0.1) == pytest.approx(2.0)
    assert robust_zscore(12.0, sample) == math.inf and robust_zscore(8.0, sample) == -math.inf
    assert robust_zscore(10.0, sample) == 0.0
    # a MAD above the floor is used as it is: deviations 1, 1, 1, 1 -> scale 1.4826 > 0.1 * 10
    assert median_and_scale([9.0, 11.0, 9.0, 11.0], min_relative_scale=0.1) == (10.0, pytest.approx(MAD_TO_SIGMA))


def test_an_empty_sample_is_refused():
    with pytest.raises(ValueError, match="at least one value"):
        robust_zscore(1.0, [])


def test_five_numbers_interpolate_between_order_statistics():
    # Execute / Assert: the order of the input does not matter; two values interpolate linearly
    assert five_numbers([5.0, 1.0, 4.0, 2.0, 3.0]) == {"min": 1.0, "q25": 2.0, "median": 3.0, "q75": 4.0, "max": 5.0}
    assert five_numbers([1.0, 2.0]) == {"min": 1.0, "q25": 1.25, "median": 1.5, "q75": 1.75, "max": 2.0}
    assert five_numbers([]) is None
