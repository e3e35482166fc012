"""Tests of the round engine with FedAvg (aggregation/mean.py) and server SGD (aggregation/server_opt.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.core.types import Task, Update
from fedlm.updates.pipeline import fedavg_pipeline
from fedlm.server.rounds import (
    ServerState,
    accept_update,
    close_round,
    initial_state,
    is_complete,
    make_tasks,
    mark_failed,
    open_round,
)

from round_helpers import DELTA_A, DELTA_B, GLOBAL, _snapshot, _update


def _run_round(state: ServerState, *, weighting: str, server_lr: float) -> tuple:
    rnd = open_round(state, ("a", "b"), fedavg_pipeline(weighting=weighting, server_lr=server_lr))
    accept_update(rnd, _update(rnd, "a", DELTA_A.copy(), num_samples=1))
    accept_update(rnd, _update(rnd, "b", DELTA_B.copy(), num_samples=3))
    return close_round(state, rnd)


# --- the arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weighting", "server_lr", "expected"),
    [
        # samples: (1*[1,2,3] + 3*[3,6,9]) / 4 = [2.5, 5, 7.5]
        ("samples", 1.0, [3.5, 6.0, 8.5]),
        ("samples", 0.5, [2.25, 3.5, 4.75]),
        # uniform: ([1,2,3] + [3,6,9]) / 2 = [2, 4, 6]
        ("uniform", 1.0, [3.0, 5.0, 7.0]),
        ("uniform", 0.5, [2.0, 3.0, 4.0]),
    ],
)
def test_fedavg_round_gives_the_hand_computed_global(weighting: str, server_lr: float, expected: list[float]):
    # Prepare
    state = initial_state(GLOBAL)
    # Execute
    new_state, outcome = _run_round(state, weighting=weighting, server_lr=server_lr)
    # Assert
    assert new_state.global_vector.tolist() == expected
    assert new_state.global_vector.dtype == np.float32
    assert outcome.committed and outcome.accepted == ("a", "b") and outcome.failed == ()


def test_the_accumulator_holds_the_weighted_sum():
    # Prepare
    rnd = open_round(initial_state(GLOBAL), ("a", "b"))
    # Execute
    accept_update(rnd, _update(rnd, "a", DELTA_A, num_samples=1))
    accept_update(rnd, _update(rnd, "b", DELTA_B, num_samples=3))
    # Assert
    assert rnd.total.tolist() == [10.0, 20.0, 30.0]
    assert rnd.weights == {"a": 1.0, "b": 3.0}


def test_the_order_of_arrival_does_not_change_the_result():
    # Prepare
    state = initial_state(GLOBAL)
    forward, backward = open_round(state, ("a", "b")), open_round(state, ("a", "b"))
    # Execute
    accept_update(forward, _update(forward, "a", DELTA_A, 1))
    accept_update(forward, _update(forward, "b", DELTA_B, 3))
    accept_update(backward, _update(backward, "b", DELTA_B, 3))
    accept_update(backward, _update(backward, "a", DELTA_A, 1))
    # Assert
    assert close_round(state, forward)[0].global_vector.tobytes() == (
        close_round(state, backward)[0].global_vector.tobytes()
    )


def test_version_and_round_count_advance_with_each_committed_round():
    # Prepare
    state = initial_state(GLOBAL)
    # Execute
    first, outcome1 = _run_round(state, weighting="samples", server_lr=1.0)
    second, outcome2 = _run_round(first, weighting="samples", server_lr=1.0)
    # Assert
    assert (state.version, first.version, second.version) == (0, 1, 2)
    assert (state.rounds_done, first.rounds_done, second.rounds_done) == (0, 1, 2)
    assert (outcome1.round, outcome1.version, outcome2.round, outcome2.version) == (1, 1, 2, 2)
    assert second.global_vector.tolist() == [6.0, 11.0, 16.0]  # [3.5, 6, 8.5] + [2.5, 5, 7.5]


def test_closing_a_round_leaves_the_old_state_and_the_updates_unchanged():
    # Prepare
    state = initial_state(GLOBAL)
    rnd = open_round(state, ("a", "b"))
    a, b = DELTA_A.copy(), DELTA_B.copy()
    # Execute
    accept_update(rnd, _update(rnd, "a", a, 1))
    accept_update(rnd, _update(rnd, "b", b, 3))
    new_state, _ = close_round(state, rnd)
    # Assert
    assert state.global_vector.tolist() == [1.0, 1.0, 1.0]
    assert state.version == 0 and state.rounds_done == 0
    assert not np.shares_memory(new_state.global_vector, state.global_vector)
    assert a.tobytes() == DELTA_A.tobytes() and b.tobytes() == DELTA_B.tobytes()


def test_accept_update_neither_modifies_nor_keeps_the_update_vector():
    # Prepare
    rnd = open_round(initial_state(GLOBAL), ("a",))
    vector = DELTA_A.copy()
    # Execute
    accept_update(rnd, _update(rnd, "a", vector, num_samples=3))
    vector[:] = 100.0  # the client reuses its buffer
    # Assert
    assert rnd.total.tolist() == [3.0, 6.0, 9.0]
    assert not np.shares_memory(rnd.total, vector)


def test_initial_state_copies_the_vector_and_rejects_a_bad_one():
    # Prepare
    vector = GLOBAL.copy()
    # Execute
    state = initial_state(vector)
    vector[0] = 9.0
    # Assert
    assert state.global_vector.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="float32"):
        initial_state(GLOBAL.astype(np.float64))
    with pytest.raises(ValueError, match="1-D"):
        initial_state(GLOBAL.reshape(1, 3))


def test_accepted_metrics_are_kept_per_client():
    # Prepare
    rnd = open_round(initial_state(GLOBAL), ("a",))
    metrics = {"loss": 2.5}
    # Execute
    accept_update(rnd, _update(rnd, "a", DELTA_A, metrics=metrics))
    metrics["loss"] = 0.0
    # Assert
    assert rnd.metrics == {"a": {"loss": 2.5}}


# --- opening a round --------------------------------------------------------------------


def test_open_round_serves_the_current_version_to_the_cohort():
    # Prepare
    state = ServerState(version=4, global_vector=GLOBAL.copy(), rounds_done=6)
    # Execute
    rnd = open_round(state, ("b", "a"))
    tasks = make_tasks(rnd)
    # Assert
    assert (rnd.round, rnd.version, rnd.cohort) == (7, 4, ("b", "a"))
    assert not rnd.total.any() and rnd.total.dtype == np.float32
    assert tasks == [Task(round=7, version=4, client_id="b"), Task(round=7, version=4, client_id="a")]


def test_open_round_rejects_a_duplicate_cohort_and_an_unknown_weighting():
    state = initial_state(GLOBAL)
    with pytest.raises(ValueError, match="duplicate"):
        open_round(state, ("a", "b", "a"))
    with pytest.raises(ValueError, match="weighting"):
        fedavg_pipeline(weighting="by_loss")


# --- rejected updates leave the round byte-identical -------------------------------------


def test_is_complete_counts_accepted_and_failed_clients():
    # Prepare
    rnd = open_round(initial_state(GLOBAL), ("a", "b", "c"))
    # Execute / Assert
    assert not is_complete(rnd)
    accept_update(rnd, _update(rnd, "a", DELTA_A))
    mark_failed(rnd, "b")
    assert not is_complete(rnd)
    mark_failed(rnd, "c")
    assert is_complete(rnd)


def test_an_empty_cohort_is_complete_at_once():
    assert is_complete(open_round(initial_state(GLOBAL), ()))


@pytest.mark.parametrize("client", ["z", "a"], ids=["not-in-cohort", "already-accepted"])
def test_mark_failed_refuses_and_leaves_the_round_unchanged(client: str):
    # Prepare
    rnd = open_round(initial_state(GLOBAL), ("a", "b"))
    accept_update(rnd, _update(rnd, "a", DELTA_A))
    before = _snapshot(rnd)
    # Execute
    with pytest.raises(ValueError, match=client):
        mark_failed(rnd, client)
    # Assert
    assert _snapshot(rnd) == before


def test_failed_clients_are_reported_and_excluded_from_the_mean():
    # Prepare
    state = initial_state(GLOBAL)
    rnd = open_round(state, ("a", "b", "c"))
    accept_update(rnd, _update(rnd, "b", DELTA_B, num_samples=3))
    mark_failed(rnd, "c")
    mark_failed(rnd, "a")
    # Execute
    new_state, outcome = close_round(state, rnd)
    # Assert
    assert (outcome.accepted, outcome.failed, outcome.committed) == (("b",), ("a", "c"), True)
    assert new_state.global_vector.tolist() == [4.0, 7.0, 10.0]


def test_an_empty_round_keeps_the_global_and_version_but_counts_the_round():
    # Prepare
    state = ServerState(version=2, global_vector=GLOBAL.copy(), rounds_done=4)
    rnd = open_round(state, ("a", "b"))
    mark_failed(rnd, "a")
    # Execute
    new_state, outcome = close_round(state, rnd)
    # Assert
    assert (new_state.version, new_state.rounds_done) == (2, 5)
    assert new_state.global_vector.tobytes() == GLOBAL.tobytes()
    assert (outcome.round, outcome.version, outcome.committed) == (5, 2, False)
    assert (outcome.accepted, outcome.failed) == ((), ("a",))
    assert open_round(new_state, ("a",)).round == 6


def test_close_round_refuses_a_round_that_does_not_follow_the_state():
    # Prepare
    state = initial_state(GLOBAL)
    rnd = open_round(state, ("a",))
    accept_update(rnd, _update(rnd, "a", DELTA_A))
    new_state, _ = close_round(state, rnd)
    before = _snapshot(rnd)
    # Execute / Assert: the same round again, against the state it produced
    with pytest.raises(ValueError, match="does not follow"):
        close_round(new_state, rnd)
    # a round opened from a state of another version
    stale = ServerState(version=5, global_vector=GLOBAL.copy(), rounds_done=0)
    with pytest.raises(ValueError, match="does not follow"):
        close_round(stale, open_round(state, ("a",)))
    assert _snapshot(rnd) == before
    assert new_state.version == 1 and new_state.global_vector.tolist() == [2.0, 3.0, 4.0]



def _round_with_samples(samples: dict[str, int], *, weighting="samples", max_weight=0.0):
    from fedlm.server.rounds import accept_update, initial_state, open_round
    from fedlm.updates.pipeline import ServerOptimizer, Stage, Step, make_pipeline

    pipeline = make_pipeline((Step("mean", Stage.AGGREGATE),), ServerOptimizer("sgd", lr=1.0), weighting=weighting,
                             max_weight=max_weight)
    state = initial_state(np.zeros(2, np.float32), pipeline)
    rnd = open_round(state, tuple(samples), pipeline)
    for who, n in samples.items():
        accept_update(rnd, Update(1, 0, who, n, np.array([1.0, float(n)], np.float32), {}))
    return state, rnd


def test_weight_cap_changes_the_mean_to_the_capped_weights():
    from fedlm.server.rounds import close_round

    state, rnd = _round_with_samples({"a": 10, "b": 30, "big": 1000}, max_weight=60.0)
    new, _ = close_round(state, rnd)
    # second coordinate: (10*10 + 30*30 + 60*1000) / (10 + 30 + 60) = 610
    np.testing.assert_allclose(new.global_vector, [1.0, 610.0], rtol=1e-6)


def test_dominance_warning_names_the_client_and_its_share():
    from fedlm.server.rounds import dominance_warning, weight_share

    _, rnd = _round_with_samples({"a": 48, "b": 48, "c": 48, "big": 95690})
    warning = dominance_warning(rnd)
    assert weight_share(rnd) == pytest.approx(95690 / (95690 + 3 * 48))
    assert warning is not None and "client big holds 100%" in warning and "uncapped" in warning
    assert "strategy.max_client_weight" in warning
    _, capped = _round_with_samples({"a": 48, "b": 48, "c": 48, "big": 95690}, max_weight=48.0)
    assert dominance_warning(capped) is None and weight_share(capped) == 0.25
    _, two = _round_with_samples({"a": 1, "big": 1000})
    assert dominance_warning(two) is None  # two clients: one of them always holds half or more
    _, uniform = _round_with_samples({"a": 1, "b": 1, "big": 1000}, weighting="uniform")
    assert dominance_warning(uniform) is None
