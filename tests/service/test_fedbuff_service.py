"""FedBuff in the service, in-process: tasks without cohorts, late updates weighted by staleness, steps, restarts.

Prepare / Execute / Assert with hand-worked numbers: buffer_size K = 2, uniform weights,
w(s) = 1/sqrt(1+s). Every refusal leaves the buffer (its sum, weights and sources) and the
global byte-identical.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlalchemy import select

from fedlm.service import store as db
from fedlm.service.buffered_rounds import BufferedRounds
from fedlm.updates import wire

from conftest import INITIAL, build_service

A = np.array([1, 1, 1, 1, 1, 1], np.float32)
B = np.array([0, 4, 0, -4, 8, 0], np.float32)
C = np.array([2, 0, -2, 0, 0, 6], np.float32)
D = np.array([0, 0, 1, 0, 0, 0], np.float32)


def fedbuff_service(tmp_path, *, max_staleness=4, concurrency=3, rounds=3, **kwargs):
    overrides = {"federation": {"rounds": rounds}, "strategy": {"weighting": "uniform"},
                 "policy": {"kind": "fedbuff", "buffer_size": 2, "concurrency": concurrency,
                            "max_staleness": max_staleness}}
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'fedlm.db'}", names=("alice", "bob", "carol", "dave"),
                            overrides=overrides, **kwargs)
    for name in ("alice", "bob", "carol", "dave"):
        assert service.clients[name].post("/v1/clients/register", json={}).status_code == 200
    return service


def task(service, name):
    return service.clients[name].post("/v1/tasks/next", json={}).json()["task"]


def upload(service, name, delta, offered):
    return service.clients[name].post(f"/v1/rounds/{offered['round']}/updates",
                                      params={"version": offered["version"], "num_samples": 1},
                                      content=wire.serialize_dense(delta), headers={"X-Fedlm-Metrics": '{"train_loss": 1.5}'})


def buffer_bytes(coordinator):
    buffer = coordinator.buffer
    return (buffer.total.tobytes(), list(buffer.weights), dict(buffer.sources), buffer.version,
            coordinator.state.global_vector.tobytes())


def test_a_late_update_counts_weighted_by_its_staleness(tmp_path):
    # Prepare: three tasks from version 0 in buffer 1
    service = fedbuff_service(tmp_path)
    offers = {name: task(service, name) for name in ("alice", "bob", "carol")}
    assert {(o["round"], o["version"]) for o in offers.values()} == {(1, 0)}
    # Execute: alice and bob fill the buffer; carol answers late, into buffer 2, beside alice's next task
    assert upload(service, "alice", A, offers["alice"]).status_code == 200
    assert upload(service, "bob", B, offers["bob"]).status_code == 200
    v1 = INITIAL + (A + B) / 2
    np.testing.assert_allclose(service.coordinator.state.global_vector, v1, rtol=1e-6)
    late = upload(service, "carol", C, offers["carol"])
    second = task(service, "alice")
    assert (second["round"], second["version"]) == (2, 1)
    assert upload(service, "alice", D, second).status_code == 200
    # Assert: v2 = v1 + (C / sqrt(1 + 1) + D) / K, the paper's division by K
    assert late.status_code == 200 and late.json()["staleness"] == 1 and late.json()["round"] == 2
    v2 = v1 + (C / math.sqrt(2) + D) / 2
    np.testing.assert_allclose(service.coordinator.state.global_vector, v2, rtol=1e-6)
    assert service.coordinator.state.version == 2
    with service.coordinator.store.session() as session:
        rows = [(u.round, u.client_id, u.version) for u in session.scalars(select(db.UpdateRow).order_by(db.UpdateRow.id))]
        version_two = session.get(db.VersionRow, 2).metrics
    assert rows == [(1, "alice", 0), (1, "bob", 0), (2, "carol", 0), (2, "alice", 1)]
    assert version_two["staleness_max"] == 1 and version_two["train_loss"] == 1.5 and version_two["accepted"] == 2


def test_an_update_past_max_staleness_is_refused_and_leaves_the_buffer_byte_identical(tmp_path):
    # Prepare: carol's task is from version 0; the server moves to version 1, then takes alice's next update
    service = fedbuff_service(tmp_path, max_staleness=0)
    offers = {name: task(service, name) for name in ("alice", "bob", "carol")}
    upload(service, "alice", A, offers["alice"])
    upload(service, "bob", B, offers["bob"])
    upload(service, "alice", D, task(service, "alice"))
    before = buffer_bytes(service.coordinator)
    # Execute
    answer = upload(service, "carol", C, offers["carol"])
    # Assert: refused with the reason, nothing folded; the task is over and carol gets a fresh one from version 1
    assert answer.status_code == 409 and answer.json()["error"] == "too_stale"
    assert "past policy.max_staleness = 0" in answer.json()["detail"]
    assert buffer_bytes(service.coordinator) == before
    with service.coordinator.store.session() as session:
        assert session.get(db.TaskRow, (1, "carol")).status == "failed"
        assert session.scalar(select(db.UpdateRow).where(db.UpdateRow.client_id == "carol")) is None
    fresh = task(service, "carol")
    assert (fresh["round"], fresh["version"]) == (2, 1)


def test_refusals_name_what_is_wrong_and_change_nothing(tmp_path):
    service = fedbuff_service(tmp_path)
    offer = task(service, "alice")
    before = buffer_bytes(service.coordinator)
    wrong_version = upload(service, "alice", A, {**offer, "version": 1})
    no_task = upload(service, "bob", A, offer)
    future = upload(service, "bob", A, {"round": 9, "version": 0})
    bad_shape = upload(service, "alice", A[:3], offer)
    assert (wrong_version.status_code, wrong_version.json()["error"]) == (409, "wrong_version")
    assert (no_task.status_code, no_task.json()["error"]) == (403, "not_in_cohort")
    assert (future.status_code, future.json()["error"]) == (404, "round_not_open")
    assert bad_shape.status_code == 400
    assert buffer_bytes(service.coordinator) == before
    assert upload(service, "alice", A, offer).status_code == 200  # the task is still the client's to answer
    replay = upload(service, "alice", A, offer)
    assert (replay.status_code, replay.json()["error"]) == (409, "already_answered")


def test_at_most_concurrency_tasks_are_out_and_an_expired_one_frees_its_slot(tmp_path):
    service = fedbuff_service(tmp_path, concurrency=2)
    first, second = task(service, "alice"), task(service, "bob")
    assert first is not None and second is not None
    assert task(service, "carol") is None  # two tasks out
    assert task(service, "alice") == first  # a client asking again gets the task it holds
    service.clock.now += 101  # past scheduling.deadline_seconds = 100
    assert task(service, "carol") is not None
    late = upload(service, "alice", A, first)
    assert (late.status_code, late.json()["error"]) == (409, "task_expired")
    assert service.coordinator.buffer.buffered == 0


def test_a_restart_refolds_the_buffer_and_gives_the_same_version(tmp_path):
    # Prepare: alice's update is in buffer 1 when the coordinator stops
    service = fedbuff_service(tmp_path)
    offers = {name: task(service, name) for name in ("alice", "bob")}
    upload(service, "alice", A, offers["alice"])
    before = buffer_bytes(service.coordinator)
    # Execute
    service.restart()
    # Assert: the same buffer; bob's task is still his; the step is the one without a restart
    assert buffer_bytes(service.coordinator) == before
    assert task(service, "bob") == offers["bob"]
    assert upload(service, "bob", B, offers["bob"]).status_code == 200
    np.testing.assert_allclose(service.coordinator.state.global_vector, INITIAL + (A + B) / 2, rtol=1e-6)


def test_a_buffer_full_when_the_process_died_is_stepped_on_restart(tmp_path, monkeypatch):
    # Prepare: the process dies after the second update is committed, before the step is stored
    service = fedbuff_service(tmp_path)
    offers = {name: task(service, name) for name in ("alice", "bob")}
    upload(service, "alice", A, offers["alice"])

    def die(self, aggregation):
        raise RuntimeError("killed")

    monkeypatch.setattr(BufferedRounds, "_try_step", die)
    with pytest.raises(RuntimeError, match="killed"):
        upload(service, "bob", B, offers["bob"])
    monkeypatch.undo()
    # Execute
    coordinator = service.restart()
    # Assert: nothing accepted was lost; version 1 is the mean of both
    assert coordinator.state.version == 1
    np.testing.assert_allclose(coordinator.state.global_vector, INITIAL + (A + B) / 2, rtol=1e-6)
    assert coordinator.open_round_number == 2 and coordinator.buffer.buffered == 0


def test_the_run_finishes_after_its_steps_and_tasks_still_out_no_longer_count(tmp_path):
    service = fedbuff_service(tmp_path, rounds=1)
    offers = {name: task(service, name) for name in ("alice", "bob", "carol")}
    upload(service, "alice", A, offers["alice"])
    upload(service, "bob", B, offers["bob"])
    status = service.clients["alice"].get("/v1/status").json()
    late = upload(service, "carol", C, offers["carol"])
    assert status["finished"] and status["open_round"] is None and status["version"] == 1
    assert late.status_code == 409 and late.json()["error"] == "round_not_open"
    assert "the run is finished" in late.json()["detail"]
    assert task(service, "dave") is None


def test_a_client_holds_one_update_per_buffer_and_asks_again_after_the_step(tmp_path):
    # Prepare: carol's late version-0 update goes into buffer 2
    service = fedbuff_service(tmp_path)
    offers = {name: task(service, name) for name in ("alice", "bob", "carol")}
    upload(service, "alice", A, offers["alice"])
    upload(service, "bob", B, offers["bob"])
    assert upload(service, "carol", C, offers["carol"]).json()["round"] == 2
    # Execute / Assert: no task for carol while her update sits in buffer 2; one once alice's fills and steps it
    assert task(service, "carol") is None
    upload(service, "alice", D, task(service, "alice"))
    again = task(service, "carol")
    assert (again["round"], again["version"]) == (3, 2)


def test_a_step_that_fails_to_store_is_retried_and_nothing_runs_ahead_of_the_store(tmp_path):
    # Prepare: the canary evaluation fails while `broken` is set (version 0 is scored at start, before)
    broken = []

    def evaluator(vector):
        if broken:
            raise MemoryError("evaluation failed")
        return 1.0

    service = fedbuff_service(tmp_path, evaluator=evaluator)
    offers = {name: task(service, name) for name in ("alice", "bob", "carol")}
    upload(service, "alice", A, offers["alice"])
    broken.append(True)
    # Execute: bob fills the buffer; storing the step fails (and again at every tick while broken)
    second = upload(service, "bob", B, offers["bob"])
    # Assert: bob's update is kept; memory is the store's version 0; nothing is handed out or taken meanwhile
    assert second.status_code == 200
    coordinator = service.coordinator
    assert coordinator.state.version == 0 and coordinator._pending_step is not None
    with coordinator.store.session() as session:
        assert db.latest_version(session).version == 0 and len(db.accepted_updates(session, 1)) == 2
    assert task(service, "dave") is None
    waiting = upload(service, "carol", C, offers["carol"])
    assert (waiting.status_code, waiting.json()["error"]) == (503, "step_pending")
    # Execute: the evaluation works again; the next tick stores the step
    broken.clear()
    coordinator.tick()
    # Assert: version 1 is the mean of both, as without the failure; carol's update is taken now, one version late
    np.testing.assert_allclose(coordinator.state.global_vector, INITIAL + (A + B) / 2, rtol=1e-6)
    assert coordinator._pending_step is None
    assert upload(service, "carol", C, offers["carol"]).json()["staleness"] == 1
