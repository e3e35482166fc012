"""Tests of FedBuff's buffer (server/buffered.py): equal to a synchronous round at zero staleness, weights by hand,
refusals that leave the state byte-identical."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest

from fedlm.aggregation.server_opt import ServerOptimizer
from fedlm.core.types import Update
from fedlm.server.buffered import (
    BufferPolicy,
    BufferedState,
    StaleUpdate,
    accept_stale,
    new_buffer,
    staleness_weight,
)
from fedlm.server.rounds import ServerState, UpdateRejected, accept_update, close_round, initial_state, open_round
from fedlm.updates.pipeline import Pipeline, Stage, Step, fedavg_pipeline, make_pipeline

CLIENTS = ("a", "b", "c")
DELTAS = {  # one update per client, with its sample count
    "a": (np.array([1.0, -2.0, 0.5, 4.0], np.float32), 2),
    "b": (np.array([0.25, 3.0, -1.0, 2.0], np.float32), 5),
    "c": (np.array([-3.0, 1.0, 2.0, -0.5], np.float32), 1),
}


def _pipelines() -> dict[str, Pipeline]:
    mean = (Step("mean", Stage.AGGREGATE),)
    bounded = (Step("norm_bound", Stage.INGRESS, summable=False, params=(("max_norm", 2.0),)), *mean)
    return {
        "fedavg_samples": fedavg_pipeline(),
        "fedavg_uniform_lr_half": fedavg_pipeline(weighting="uniform", server_lr=0.5),
        "fedavgm": make_pipeline(mean, ServerOptimizer("sgd", lr=1.0, momentum=0.9)),
        "fedadam": make_pipeline(mean, ServerOptimizer("adam", lr=0.1), weighting="uniform"),
        "norm_bound": make_pipeline(bounded, ServerOptimizer("sgd", lr=1.0)),
    }


def _update(client: str, version: int, vector: np.ndarray | None = None, samples: int | None = None) -> Update:
    delta, count = DELTAS[client]
    return Update(round=version + 1, version=version, client_id=client, num_samples=count if samples is None else samples,
                  vector=(delta if vector is None else vector).copy(), metrics={"train_loss": 1.0})


def _snapshot(state: BufferedState) -> tuple:
    """Every array's bytes and every other field: all an update could change."""
    server = state.server
    return (
        server.version, server.rounds_done, server.clip_norm, server.global_vector.tobytes(),
        tuple(m.tobytes() for m in server.opt_state), server.ledger,
        state.total.tobytes(), state.scratch.tobytes(),
        list(state.weights), list(state.staleness), dict(state.sources), copy.deepcopy(state.metrics),
    )


def _server_at(version: int, global_vector: np.ndarray, pipeline: Pipeline) -> ServerState:
    return dataclasses.replace(initial_state(global_vector, pipeline), version=version, rounds_done=version)


# --- FedBuff with K = cohort and zero staleness is a synchronous round ---------------------------


@pytest.mark.parametrize("name", list(_pipelines()))
def test_zero_staleness_buffer_of_the_cohort_equals_two_synchronous_rounds(name: str):
    # Prepare
    pipeline = _pipelines()[name]
    start = initial_state(np.array([0.5, 0.5, -1.0, 2.0], np.float32), pipeline)
    sync, buffered = start, new_buffer(start, pipeline, BufferPolicy(buffer_size=3, max_staleness=0))
    steps = []
    # Execute: two rounds each way, every update started from the version the server holds
    for _ in range(2):
        rnd = open_round(sync, CLIENTS, pipeline)
        for client in CLIENTS:
            accept_update(rnd, _update(client, sync.version))
        sync, _ = close_round(sync, rnd)
        for client in CLIENTS:
            step = accept_stale(buffered, _update(client, buffered.version))
        steps.append(step)
    # Assert
    assert buffered.server.version == sync.version == 2 and buffered.server.rounds_done == 2
    np.testing.assert_allclose(buffered.server.global_vector, sync.global_vector, rtol=0, atol=1e-6)
    assert buffered.server.global_vector.tobytes() == sync.global_vector.tobytes()  # in fact the same folds, bit for bit
    for ours, theirs in zip(buffered.server.opt_state, sync.opt_state, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert [s.version for s in steps] == [1, 2] and all(s.staleness == (0, 0, 0) for s in steps)
    assert buffered.buffered == 0 and not buffered.total.any()  # the buffer is empty again


# --- staleness weights by hand ---------------------------------------------------------------------


@pytest.mark.parametrize(("staleness", "kind", "expected"), [
    (0, "sqrt", 1.0), (3, "sqrt", 0.5), (8, "sqrt", 1 / 3), (15, "sqrt", 0.25), (1, "sqrt", 1 / math.sqrt(2)),
    (0, "constant", 1.0), (7, "constant", 1.0),
])
def test_staleness_weight_is_one_over_root_of_one_plus_s(staleness: int, kind: str, expected: float):
    # Execute
    weight = staleness_weight(staleness, kind)
    # Assert
    assert weight == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("kind", "weighting", "expected"), [
    # uniform: (w(3) [2,4] + w(0) [4,8]) / (1 + 1) = (0.5 [2,4] + [4,8]) / 2 = [2.5, 5]
    ("sqrt", "uniform", [2.5, 5.0]),
    # constant: ([2,4] + [4,8]) / 2 = [3, 6]
    ("constant", "uniform", [3.0, 6.0]),
    # samples (1 and 3): (1 x 0.5 [2,4] + 3 x 1 [4,8]) / (1 + 3) = [13, 26] / 4 = [3.25, 6.5]
    ("sqrt", "samples", [3.25, 6.5]),
])
def test_stale_update_is_weighted_by_hand_worked_numbers(kind: str, weighting: str, expected: list[float]):
    # Prepare: the server is at version 3; "a" started from version 0 (s = 3), "b" from version 3 (s = 0)
    pipeline = fedavg_pipeline(weighting=weighting)
    server = _server_at(3, np.zeros(2, np.float32), pipeline)
    state = new_buffer(server, pipeline, BufferPolicy(buffer_size=2, max_staleness=3, staleness_weight=kind))
    stale = _update("a", 0, np.array([2, 4], np.float32), samples=1)
    fresh = _update("b", 3, np.array([4, 8], np.float32), samples=3)
    # Execute
    first = accept_stale(state, stale)
    step = accept_stale(state, fresh)
    # Assert
    assert first is None and step is not None
    assert step.version == 4 and step.staleness == (3, 0) and step.clients == ("a", "b")
    np.testing.assert_allclose(state.server.global_vector, np.array(expected, np.float32), rtol=0, atol=1e-6)


# --- refusals --------------------------------------------------------------------------------------


def _half_full_buffer(pipeline: Pipeline | None = None) -> BufferedState:
    """Server at version 5, max staleness 2, buffer of 3 holding one update (so the accumulator is not zero)."""
    pipeline = pipeline or fedavg_pipeline()
    server = _server_at(5, np.array([1, 2, 3, 4], np.float32), pipeline)
    state = new_buffer(server, pipeline, BufferPolicy(buffer_size=3, max_staleness=2))
    accept_stale(state, _update("a", 4))
    return state


@pytest.mark.parametrize(("update", "error", "reason"), [
    (_update("b", 2), StaleUpdate, "3 versions behind the server's 5: past policy.max_staleness = 2"),
    (_update("b", 6), StaleUpdate, "started from version 6, which the server (at version 5) has not made"),
    (_update("a", 4), UpdateRejected, "already holds an update from a started from version 4"),
    (_update("b", 5, np.array([1, np.nan, 0, 0], np.float32)), UpdateRejected, "non-finite"),
    (_update("b", 5, np.ones(3, np.float32)), UpdateRejected, "must be float32 of shape"),
    (_update("b", 5, samples=0), UpdateRejected, "reports 0 samples"),
    (dataclasses.replace(_update("b", 5), version=-1), UpdateRejected, "expected an integer >= 0"),
])
def test_refused_update_says_why_and_leaves_the_state_byte_identical(update: Update, error: type, reason: str):
    # Prepare
    state = _half_full_buffer()
    before = _snapshot(state)
    # Execute
    with pytest.raises(error, match=reason.replace("(", r"\(").replace(")", r"\)")):
        accept_stale(state, update)
    # Assert
    assert _snapshot(state) == before


def test_refusal_under_norm_bounding_leaves_the_scratch_untouched():
    # Prepare: norm bounding writes each accepted update's bounded copy into the scratch vector
    pipeline = _pipelines()["norm_bound"]
    state = _half_full_buffer(pipeline)
    before = _snapshot(state)
    # Execute
    with pytest.raises(StaleUpdate):
        accept_stale(state, _update("b", 1))
    # Assert
    assert _snapshot(state) == before


def test_update_at_exactly_max_staleness_is_folded():
    # Prepare
    state = _half_full_buffer()
    # Execute: s = 5 - 3 = 2 = max_staleness
    step = accept_stale(state, _update("b", 3))
    # Assert
    assert step is None and state.staleness == [1, 2] and state.buffered == 2


def test_zero_max_staleness_refuses_an_update_one_version_behind():
    # Prepare
    pipeline = fedavg_pipeline()
    state = new_buffer(_server_at(1, np.zeros(4, np.float32), pipeline), pipeline, BufferPolicy(2, max_staleness=0))
    # Execute / Assert
    with pytest.raises(StaleUpdate, match="past policy.max_staleness = 0"):
        accept_stale(state, _update("a", 0))
    assert accept_stale(state, _update("a", 1)) is None


@pytest.mark.parametrize("pipeline", [
    make_pipeline((Step("median", Stage.AGGREGATE, summable=False),), ServerOptimizer("sgd", lr=1.0)),
    make_pipeline((Step("lora_svd", Stage.AGGREGATE, summable=False, params=(("rank", 2),)),), ServerOptimizer("sgd", lr=1.0),
                  spec=object()),
], ids=["median", "svd"])
def test_buffer_refuses_an_aggregator_that_needs_every_update_as_a_row(pipeline: Pipeline):
    # Execute / Assert
    with pytest.raises(ValueError, match="folds updates into a sum"):
        new_buffer(initial_state(np.zeros(4, np.float32), pipeline), pipeline, BufferPolicy(2, 1))


def test_buffer_policy_refuses_a_bad_size_or_weight():
    # Execute / Assert
    with pytest.raises(ValueError, match="buffer_size >= 1"):
        BufferPolicy(buffer_size=0, max_staleness=1)
    with pytest.raises(ValueError, match="staleness weight"):
        BufferPolicy(buffer_size=2, max_staleness=1, staleness_weight="linear")
