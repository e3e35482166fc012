"""Tests of robust aggregation (aggregation/robust.py): planted outliers and hand-worked numbers."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.aggregation import robust
from fedlm.aggregation.robust import (
    bound_norm,
    coordinate_median,
    krum,
    krum_scores,
    multi_krum,
    pairwise_sq_distances,
    trim_count,
    trimmed_mean,
)


def _f32(rows: list) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


# Seven updates (first coordinate on a line, second constant 5), shuffled.
# With f = 2 each score sums the N - f - 2 = 3 nearest squared distances:
#   0.0: 0.01 + 0.04 + 1     = 1.05      0.1: 0.01 + 0.01 + 0.81 = 0.83
#   0.2: 0.01 + 0.04 + 0.64  = 0.69      1:   0.64 + 0.81 + 1    = 2.45
#   2:   1 + 3.24 + 3.61     = 7.85      10:  64 + 81 + 96.04    = 241.04
#   20:  100 + 324 + 361     = 785
SEVEN = _f32([[10, 5], [0.1, 5], [2, 5], [0.0, 5], [20, 5], [0.2, 5], [1, 5]])
SEVEN_SCORES = [241.04, 0.83, 7.85, 1.05, 785.0, 0.69, 2.45]


# --- median and trimmed mean ----------------------------------------------------------------


def test_median_ignores_the_outlier():
    assert coordinate_median(_f32([[1, 10], [2, 20], [3, -1000]])).tolist() == [2.0, 10.0]


def test_median_of_an_even_count_is_the_midpoint():
    assert coordinate_median(_f32([[1], [2], [3], [10]])).tolist() == [2.5]


def test_median_of_huge_values_does_not_overflow():
    big = np.finfo(np.float32).max
    assert coordinate_median(_f32([[big], [big]])).tolist() == [float(big)]


def test_trimmed_mean_drops_one_outlier_per_coordinate():
    # Prepare: five updates; each coordinate has one huge outlier from a different client.
    # trim 0.2 of 5 drops 1 at each end:
    #   coordinate 0: [1, 2, 3, 4, 1e6]         -> mean(2, 3, 4)      = 3
    #   coordinate 1: [-1e6, 5, 6, 7, 8]        -> mean(5, 6, 7)      = 6
    #   coordinate 2: [-0.5, 0, 0.5, 1.5, 1e6]  -> mean(0, 0.5, 1.5)  = 2/3
    updates = _f32([[1, 5, 0.5], [2, -1e6, 1e6], [3, 6, -0.5], [4, 7, 1.5], [1e6, 8, 0.0]])
    # Execute
    out = trimmed_mean(updates, trim_fraction=0.2)
    # Assert
    np.testing.assert_allclose(out, [3.0, 6.0, 2 / 3], rtol=1e-6)
    assert out.dtype == np.float32


def test_trimmed_mean_with_no_trim_is_the_mean():
    updates = _f32([[1, 2], [3, 4], [8, 0]])
    np.testing.assert_allclose(trimmed_mean(updates, trim_fraction=0.0), [4.0, 2.0], rtol=1e-7)


def test_trim_count_is_the_floor_without_float_surprises():
    assert trim_count(0.2, 5) == 1
    assert trim_count(0.29, 100) == 29  # 0.29 * 100 is 28.999999999999996 in floating point
    assert trim_count(0.1, 9) == 0
    assert trim_count(0.4999999999999, 4) == 1  # never trims everything


def test_blocked_median_and_trimmed_mean_equal_numpy_on_random_data(monkeypatch):
    # Prepare: blocks of a few columns, so that P is not a multiple of the block width
    monkeypatch.setattr(robust, "_BLOCK_ELEMENTS", 40)
    updates = np.random.default_rng(3).standard_normal((9, 103)).astype(np.float32)
    # Execute
    median = coordinate_median(updates)
    trimmed = trimmed_mean(updates, trim_fraction=0.25)
    # Assert
    np.testing.assert_array_equal(median, np.median(updates, axis=0))
    np.testing.assert_allclose(trimmed, np.sort(updates, axis=0)[2:7].mean(axis=0), rtol=1e-6, atol=1e-7)


# --- Krum --------------------------------------------------------------------------------------


def test_krum_scores_of_three_points_on_a_line():
    # Points 0, 1, 3 with f = 0: one nearest neighbour each, squared distances 1, 1 and 4.
    points = _f32([[0.0], [1.0], [3.0]])
    assert krum_scores(points, num_byzantine=0).tolist() == [1.0, 1.0, 4.0]
    chosen, index = krum(points, num_byzantine=0)
    assert chosen.tolist() == [0.0] and index.tolist() == [0]  # a tie goes to the lower index


def test_krum_scores_of_seven_points():
    np.testing.assert_allclose(krum_scores(SEVEN, num_byzantine=2), SEVEN_SCORES, rtol=1e-6)


def test_multi_krum_selects_the_three_lowest_scores():
    # The three lowest scores are 0.69, 0.83, 1.05: rows 5, 1, 3 (values 0.2, 0.1, 0.0).
    mean, chosen = multi_krum(SEVEN, num_byzantine=2, num_selected=3)
    assert chosen.tolist() == [1, 3, 5]
    np.testing.assert_allclose(mean, [0.1, 5.0], rtol=1e-6)
    assert mean.dtype == np.float32


@pytest.mark.parametrize("seed", range(20))
def test_a_far_attacker_is_never_selected(seed):
    # Prepare: six honest updates, three near 0 and three near 1, and one attacker far away (f = 1)
    rng = np.random.default_rng(seed)
    honest = np.concatenate([np.zeros((3, 50)), np.ones((3, 50))]) + 0.05 * rng.standard_normal((6, 50))
    attacker = 30.0 + rng.standard_normal((1, 50))
    position = int(rng.integers(7))
    updates = np.insert(honest, position, attacker, axis=0).astype(np.float32)
    # Execute
    _, krum_index = krum(updates, num_byzantine=1)
    _, chosen = multi_krum(updates, num_byzantine=1, num_selected=6)
    # Assert
    assert position not in krum_index.tolist()
    assert position not in chosen.tolist()
    assert np.argmax(krum_scores(updates, num_byzantine=1)) == position


def test_gram_distances_equal_brute_force(monkeypatch):
    # Prepare: several column blocks, values with a large common offset (cancellation)
    monkeypatch.setattr(robust, "_BLOCK_ELEMENTS", 1000)
    rng = np.random.default_rng(1)
    updates = (3.0 + rng.standard_normal((12, 2001))).astype(np.float32)
    # Execute
    distances = pairwise_sq_distances(updates)
    # Assert
    wide = updates.astype(np.float64)
    brute = ((wide[:, None, :] - wide[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(distances, brute, rtol=1e-4)
    assert np.all(np.diag(distances) == 0.0)


def test_identical_updates_have_zero_not_negative_distance():
    updates = np.tile(np.random.default_rng(2).standard_normal(1000).astype(np.float32) * 1e3, (5, 1))
    assert krum_scores(updates, num_byzantine=1).tolist() == [0.0] * 5


# --- bound_norm --------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-3, 1.0, 7.5, 1e4])
def test_bound_norm_caps_the_norm_and_keeps_the_direction(scale):
    # Prepare
    rng = np.random.default_rng(int(scale * 10))
    for _ in range(20):
        vector = (scale * rng.standard_normal(1001)).astype(np.float32)
        original = float(np.linalg.norm(vector.astype(np.float64)))
        max_norm = original * rng.uniform(0.01, 0.999)
        # Execute
        out, norm = bound_norm(vector, max_norm=max_norm)
        # Assert
        after = float(np.linalg.norm(out.astype(np.float64)))
        assert after <= max_norm and after == pytest.approx(max_norm, rel=1e-5)
        assert norm == pytest.approx(original, rel=1e-12)
        np.testing.assert_allclose(out, vector * (max_norm / original), rtol=1e-5)


def test_bound_norm_copies_a_vector_already_within_the_bound():
    vector = _f32([3.0, -4.0])
    out, norm = bound_norm(vector, max_norm=5.0)
    assert norm == 5.0 and out.tobytes() == vector.tobytes() and out is not vector


def test_bound_norm_leaves_the_zero_vector_zero():
    with np.errstate(all="raise"):  # any division by zero would raise here
        out, norm = bound_norm(np.zeros(4, np.float32), max_norm=1.0)
    assert norm == 0.0 and out.tolist() == [0.0] * 4


def test_bound_norm_writes_into_out_and_in_place():
    # Prepare: norm 5, bound 1
    vector = _f32([3.0, 4.0])
    out = np.empty(2, np.float32)
    # Execute
    result, _ = bound_norm(vector, max_norm=1.0, out=out)
    same, norm = bound_norm(vector, max_norm=1.0, out=vector)
    # Assert
    assert result is out and same is vector and norm == 5.0
    np.testing.assert_allclose(out, [0.6, 0.8], rtol=1e-6)
    assert out.tobytes() == vector.tobytes()


# --- invalid inputs ---------------------------------------------------------------------------

_GOOD = np.ones((5, 3), np.float32)
_BAD_UPDATES = {
    "list": [[1.0, 2.0]] * 5,
    "float64": np.ones((5, 3)),
    "1-D": np.ones(5, np.float32),
    "3-D": np.ones((5, 3, 1), np.float32),
    "empty": np.ones((0, 3), np.float32),
    "nan": np.where(np.eye(5, 3) > 0, np.nan, 1).astype(np.float32),
    "inf": np.where(np.eye(5, 3) > 0, -np.inf, 1).astype(np.float32),
}
_AGGREGATORS = {
    "median": coordinate_median,
    "trimmed_mean": lambda u: trimmed_mean(u, trim_fraction=0.2),
    "krum_scores": lambda u: krum_scores(u, num_byzantine=1),
    "krum": lambda u: krum(u, num_byzantine=1),
    "multi_krum": lambda u: multi_krum(u, num_byzantine=1, num_selected=2),
}


@pytest.mark.parametrize("aggregate", _AGGREGATORS.values(), ids=_AGGREGATORS.keys())
@pytest.mark.parametrize("updates", _BAD_UPDATES.values(), ids=_BAD_UPDATES.keys())
def test_every_aggregator_refuses_bad_updates(aggregate, updates):
    with pytest.raises(ValueError, match="updates"):
        aggregate(updates)


@pytest.mark.parametrize("trim_fraction", [0.5, 0.7, -0.1, float("nan"), True, "0.1", None])
def test_trimmed_mean_refuses_bad_fractions(trim_fraction):
    with pytest.raises(ValueError, match="trim_fraction"):
        trimmed_mean(_GOOD, trim_fraction=trim_fraction)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_byzantine": -1}, "num_byzantine"),
        ({"num_byzantine": 1.0}, "num_byzantine"),
        ({"num_byzantine": True}, "num_byzantine"),
        ({"num_byzantine": 2}, "2 \\* num_byzantine \\+ 3"),  # N = 5 < 7
        ({"num_selected": 0}, "num_selected"),
        ({"num_selected": 5}, "num_selected"),  # more than N - f = 4
        ({"num_selected": 2.0}, "num_selected"),
    ],
)
def test_multi_krum_refuses_bad_counts(kwargs, match):
    arguments = {"num_byzantine": 1, "num_selected": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        multi_krum(_GOOD, **arguments)


def test_krum_needs_three_updates_even_without_attackers():
    with pytest.raises(ValueError, match="N >= 2"):
        krum(np.ones((2, 3), np.float32), num_byzantine=0)


@pytest.mark.parametrize(
    ("vector", "max_norm", "out", "match"),
    [
        (np.ones(3), 1.0, None, "vector"),
        (np.ones((1, 3), np.float32), 1.0, None, "vector"),
        (np.array([1, np.nan, 0], np.float32), 1.0, "fresh", "non-finite"),
        (np.array([1, np.inf, 0], np.float32), 1.0, "fresh", "non-finite"),
        (np.ones(3, np.float32), 0.0, "fresh", "max_norm"),
        (np.ones(3, np.float32), -1.0, "fresh", "max_norm"),
        (np.ones(3, np.float32), float("inf"), "fresh", "max_norm"),
        (np.ones(3, np.float32), float("nan"), "fresh", "max_norm"),
        (np.ones(3, np.float32), 1.0, np.zeros(4, np.float32), "out"),
        (np.ones(3, np.float32), 1.0, np.zeros(3), "out"),
        (np.ones(3, np.float32), 1.0, "read-only", "read-only"),
    ],
)
def test_bound_norm_refuses_bad_input_and_writes_nothing(vector, max_norm, out, match):
    # Prepare
    if isinstance(out, str):
        out = np.full(3, 7.0, np.float32)
        out.flags.writeable = match != "read-only"
    before = out.tobytes() if out is not None else None
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        bound_norm(vector, max_norm=max_norm, out=out)
    if out is not None:
        assert out.tobytes() == before
