"""Shamir sharing, the integer encoding, the masking graph and the mask PRG, each on its own."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
from scipy import stats

from fedlm.secagg import shamir
from fedlm.secagg.encoding import INT_RANGE, FixedPoint
from fedlm.secagg.graph import effective_degree, logarithmic_degree, neighbour_graph, threshold_for
from fedlm.secagg.prg import MaskStream


def test_any_threshold_shares_recover_the_secret_and_fewer_cannot():
    secret = os.urandom(32)
    points = [1, 2, 3, 4, 5]
    shares = dict(zip(points, shamir.split(secret, threshold=3, points=points)))
    for subset in itertools.combinations(points, 3):
        assert shamir.combine({x: shares[x] for x in subset}, threshold=3) == secret
    with pytest.raises(ValueError, match="2 shares cannot recover"):
        shamir.combine({1: shares[1], 2: shares[2]}, threshold=3)


def test_lagrange_weights_match_exact_interpolation_of_a_known_polynomial():
    # f(x) = 7 + 3x + 5x^2 over the field: f(0) = 7 from any three points
    f = lambda x: (7 + 3 * x + 5 * x * x) % shamir.PRIME  # noqa: E731
    points = [2, 9, 11]
    weights = shamir.lagrange_at_zero(points)
    assert sum(w * f(x) for w, x in zip(weights, points)) % shamir.PRIME == 7
    # and the weights are the closed form prod x_j / (x_j - x_i), here 99/63, -22/14, 18/18 mod p
    inverse = lambda v: pow(v, -1, shamir.PRIME)  # noqa: E731
    assert weights[0] == 99 * inverse(63) % shamir.PRIME
    assert weights[2] == 1


def test_fewer_than_threshold_shares_fit_every_secret():
    # two shares of a 3-of-3 sharing: for any candidate secret s there is a quadratic through
    # (0, s) and both shares, so a third share exists that makes the set recover s.
    y1, y2, _ = shamir.split(bytes(32), threshold=3, points=[1, 2, 3])
    for candidate in (b"\xff" * 32, os.urandom(32)):
        s = int.from_bytes(candidate, "big")
        # the quadratic through (0, s), (1, y1), (2, y2), evaluated at 3: Lagrange weights 1, -3, 3
        y3 = (s - 3 * y1 + 3 * y2) % shamir.PRIME
        assert shamir.combine({1: y1, 2: y2, 3: y3}, threshold=3) == candidate


def test_a_garbled_share_interpolates_to_no_secret():
    # a random share moves f(0) to a random field element, past 2^256 but with chance 2^-265;
    # small deliberate shifts are caught by the protocol's commitments (see the protocol tests)
    secret = os.urandom(32)
    shares = dict(zip([1, 2, 3], shamir.split(secret, threshold=3, points=[1, 2, 3])))
    shares[2] = int.from_bytes(os.urandom(64), "big") % shamir.PRIME
    with pytest.raises(ValueError, match="inconsistent"):
        shamir.combine(shares, threshold=3)


@pytest.mark.parametrize("bad", [{"threshold": 0, "points": [1, 2]}, {"threshold": 3, "points": [1, 2]},
                                 {"threshold": 2, "points": [1, 1]}, {"threshold": 1, "points": [0]}])
def test_bad_sharing_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        shamir.split(os.urandom(32), **bad)


def test_share_bytes_round_trip_and_reject_out_of_field_values():
    value = shamir.PRIME - 1
    assert shamir.decode_share(shamir.encode_share(value)) == value
    with pytest.raises(ValueError, match="below the field"):
        shamir.decode_share(shamir.PRIME.to_bytes(shamir.SHARE_BYTES, "big"))


def test_stochastic_rounding_is_unbiased_and_decodes_to_the_integer_sum():
    code = FixedPoint(bound=1.0, clients=4)
    values = np.full(200_000, 0.3, np.float32)
    out = np.empty(values.size, np.uint32)
    code.encode(values, np.random.default_rng(0), out)
    integers = out.view(np.int32).astype(np.float64)
    exact = float(np.float32(0.3)) * code.scale
    assert set(np.unique(integers)) == {math.floor(exact), math.floor(exact) + 1}
    # the mean is within 5 standard errors of x * scale (Bernoulli rounding, std <= 0.5)
    assert abs(integers.mean() - exact) < 5 * 0.5 / math.sqrt(values.size)


def test_the_sum_of_the_most_extreme_inputs_does_not_wrap():
    code = FixedPoint(bound=2.0, clients=50)
    out = np.empty(3, np.uint32)
    total = np.zeros(3, np.uint32)
    for _ in range(50):
        code.encode(np.array([5.0, -5.0, 2.0], np.float32), np.random.default_rng(1), out)  # clipped to +-2
        total += out
    decoded = code.decode_sum(total)
    assert decoded[0] == pytest.approx(100.0, rel=1e-6) and decoded[1] == pytest.approx(-100.0, rel=1e-6)
    assert code.clients * (code.bound * code.scale + 1) <= INT_RANGE


@pytest.mark.parametrize("bound, clients", [(0.0, 3), (float("inf"), 3), (1.0, 0)])
def test_bad_encodings_are_refused(bound, clients):
    with pytest.raises(ValueError):
        FixedPoint(bound, clients)


@pytest.mark.parametrize("n, k", [(10, 4), (11, 6), (50, 12), (7, 6)])
def test_the_graph_is_regular_symmetric_and_loop_free(n, k):
    clients = [f"c{i:02d}" for i in range(n)]
    graph = neighbour_graph(clients, k, np.random.default_rng(3))
    assert all(len(graph[c]) == k and c not in graph[c] for c in clients)
    assert all(c in graph[p] for c in clients for p in graph[c])


def test_degree_and_threshold_rules():
    assert effective_degree(0, 10) == 9  # all others: original SecAgg
    assert effective_degree(5, 10) == 6  # odd k rounds up (Harary graph)
    assert effective_degree(40, 10) == 9
    assert logarithmic_degree(50) == 12  # ceil(2 log2 50) = 12
    assert threshold_for(49, 0.5) == 25 and threshold_for(12, 0.5) == 7 and threshold_for(2, 0.5) == 2
    with pytest.raises(ValueError):
        effective_degree(-1, 10)


def test_masks_are_deterministic_per_seed_and_uniform():
    stream = MaskStream(100_000)
    seed = os.urandom(16)
    first = stream.expand(seed).copy()
    assert np.array_equal(stream.expand(seed), first)
    assert not np.array_equal(stream.expand(os.urandom(16)), first)
    counts = np.bincount(first >> 24, minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
    with pytest.raises(ValueError, match="16 bytes"):
        stream.expand(b"short")
