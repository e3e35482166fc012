"""The round engine's refusals: a bad update (wrong round, version, client, layout, values or size) is refused naming
the client, and leaves the round byte-identical."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.server.rounds import (
    ServerState, UpdateRejected, accept_update, check_update, initial_state, is_complete, mark_failed, open_round,
)
from fedlm.updates.pipeline import fedavg_pipeline
from round_helpers import DELTA_A, DELTA_B, GLOBAL, _f32, _snapshot, _update


ROUND, VERSION, COHORT, ANSWERED = "is for round", "started from version", "not in round", "already answered"
LAYOUT, FINITE, SAMPLES, LARGE = "must be float32 of shape", "non-finite", "reports", "too large"

# case -> (build the bad update from the round and the update already accepted, expected message)
REJECTIONS = {
    "wrong-round": (lambda r, accepted: _update(r, "b", DELTA_B, round=r.round + 1), ROUND),
    "previous-round": (lambda r, accepted: _update(r, "b", DELTA_B, round=r.round - 1), ROUND),
    "wrong-version": (lambda r, accepted: _update(r, "b", DELTA_B, version=r.version + 1), VERSION),
    "older-version": (lambda r, accepted: _update(r, "b", DELTA_B, version=r.version - 1), VERSION),
    "not-in-cohort": (lambda r, accepted: _update(r, "z", DELTA_B), COHORT),
    "duplicate": (lambda r, accepted: _update(r, "a", DELTA_A), ANSWERED),
    "replay": (lambda r, accepted: accepted, ANSWERED),
    "already-failed": (lambda r, accepted: _update(r, "c", DELTA_B), ANSWERED),
    "float64": (lambda r, accepted: _update(r, "b", DELTA_B.astype(np.float64)), LAYOUT),
    "float16": (lambda r, accepted: _update(r, "b", DELTA_B.astype(np.float16)), LAYOUT),
    "too-long": (lambda r, accepted: _update(r, "b", _f32(1, 2, 3, 4)), LAYOUT),
    "too-short": (lambda r, accepted: _update(r, "b", _f32(1, 2)), LAYOUT),
    "2-D": (lambda r, accepted: _update(r, "b", DELTA_B.reshape(1, 3)), LAYOUT),
    "list": (lambda r, accepted: _update(r, "b", [3.0, 6.0, 9.0]), LAYOUT),
    "nan": (lambda r, accepted: _update(r, "b", _f32(3, np.nan, 9)), FINITE),
    "inf": (lambda r, accepted: _update(r, "b", _f32(3, 6, np.inf)), FINITE),
    "minus-inf": (lambda r, accepted: _update(r, "b", _f32(-np.inf, 6, 9)), FINITE),
    "zero-samples": (lambda r, accepted: _update(r, "b", DELTA_B, num_samples=0), SAMPLES),
    "negative-samples": (lambda r, accepted: _update(r, "b", DELTA_B, num_samples=-2), SAMPLES),
    "too-large": (lambda r, accepted: _update(r, "b", _f32(1e31, 0, -1), num_samples=2), LARGE),
}


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_a_rejected_update_leaves_the_round_byte_identical(case: str, weighting: str):
    # Prepare: "a" answered (2 samples), "c" failed, "b" still owed
    state = ServerState(version=3, global_vector=GLOBAL.copy(), rounds_done=5)
    rnd = open_round(state, ("a", "b", "c"), fedavg_pipeline(weighting=weighting))
    accepted = _update(rnd, "a", DELTA_A, num_samples=2, metrics={"loss": 1.0})
    accept_update(rnd, accepted)
    mark_failed(rnd, "c")
    build, message = REJECTIONS[case]
    bad = build(rnd, accepted)
    before = _snapshot(rnd)
    # Execute
    with pytest.raises(UpdateRejected, match=message):
        accept_update(rnd, bad)
    # Assert
    assert _snapshot(rnd) == before
    assert not is_complete(rnd)


def test_check_update_alone_changes_nothing():
    # Prepare
    rnd = open_round(initial_state(GLOBAL), ("a",))
    before = _snapshot(rnd)
    # Execute
    check_update(rnd, _update(rnd, "a", DELTA_A))
    # Assert
    assert _snapshot(rnd) == before


def test_update_rejected_is_a_value_error_that_names_the_client():
    rnd = open_round(initial_state(GLOBAL), ("a",))
    with pytest.raises(ValueError, match="mallory"):
        accept_update(rnd, _update(rnd, "mallory", DELTA_A))


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_an_update_cannot_make_the_accumulator_non_finite():
    # Prepare
    rnd = open_round(initial_state(GLOBAL), ("a", "b"))
    accept_update(rnd, _update(rnd, "a", DELTA_A, num_samples=1))
    before = _snapshot(rnd)
    # Execute
    try:
        accept_update(rnd, _update(rnd, "b", _f32(0, 1, 2), num_samples=10**39))
    except UpdateRejected:
        assert _snapshot(rnd) == before
    # Assert
    assert np.isfinite(rnd.total).all()


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_an_all_zero_update_with_a_huge_sample_count_cannot_make_the_accumulator_non_finite():
    # Prepare
    rnd = open_round(initial_state(GLOBAL), ("a", "b"))
    accept_update(rnd, _update(rnd, "a", DELTA_A, num_samples=1))
    before = _snapshot(rnd)
    # Execute
    try:
        accept_update(rnd, _update(rnd, "b", _f32(0, 0, 0), num_samples=10**39))
    except UpdateRejected:
        assert _snapshot(rnd) == before
    # Assert
    assert np.isfinite(rnd.total).all()


def test_a_sample_count_too_large_for_a_float_is_rejected_as_an_update():
    # Prepare
    rnd = open_round(initial_state(GLOBAL), ("a", "b"))
    accept_update(rnd, _update(rnd, "a", DELTA_A, num_samples=1))
    before = _snapshot(rnd)
    # Execute
    with pytest.raises(UpdateRejected):
        accept_update(rnd, _update(rnd, "b", DELTA_B, num_samples=10**400))
    # Assert
    assert _snapshot(rnd) == before


# --- failures, completeness, empty rounds ------------------------------------------------
