"""Replicas in process: two ReplicaCoordinators over one PostgreSQL database and one blob store (service.replica).

Prepare / Execute / Assert with closed forms: uniform weights, so a round's version is the
initial global plus the plain mean of the deltas accepted, whichever replica accepted them.
Skipped with the reason where no PostgreSQL answers (tests/service/conftest.postgres_url).
"""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from fedlm.config import ConfigError, RunConfig, apply_overrides
from fedlm.service import store as db
from fedlm.service.blobs import BlobStore
from fedlm.service.coordinator import Coordinator
from fedlm.service.errors import Refused
from fedlm.service.instance_lock import AlreadyServing, hold_instance
from fedlm.service.replica import ReplicaCoordinator
from fedlm.service.scheduling import Traits
from fedlm.service.settings import RegistrySection, SchedulingSection, settings_from_dict
from fedlm.service.store import Store
from fedlm.updates import wire

from conftest import INITIAL, FakeClock, pipeline_for

A = np.array([1, 1, 1, 1, 1, 1], np.float32)
B = np.array([0, 4, 0, -4, 8, 0], np.float32)
RUN = apply_overrides(RunConfig(), {"model": {"name": "tiny"}, "federation": {"rounds": 2, "clients_per_round": 2},
                                    "strategy": {"weighting": "uniform"}})


def replica(tmp_path, url, clock, port, cls=ReplicaCoordinator):
    return cls(Store(url), BlobStore(tmp_path / "blobs", f"staging-{port}"), run=RUN, pipeline=pipeline_for(RUN),
               initial_global=INITIAL, scheduling=SchedulingSection(deadline_seconds=100.0),
               registry=RegistrySection(), clock=clock)


def upload(coordinator, name, delta, offer):
    staged = coordinator.blobs.stage_bytes(wire.serialize_dense(delta))
    return coordinator.submit(name, round=offer.round, version=offer.version, num_samples=1, metrics={}, staged=staged)


def stop(coordinator):
    """What a replica's death does to the database: its sessions (and the leader lock with them) go."""
    for held in (coordinator.leader, coordinator._asking):
        if held is not None:
            held.invalidate()
    coordinator.leader = coordinator._asking = None
    coordinator.store.dispose()


@pytest.fixture
def pair(tmp_path, postgres_url):
    clock = FakeClock()
    first, second = replica(tmp_path, postgres_url, clock, 1), replica(tmp_path, postgres_url, clock, 2)
    first.register("alice", Traits())
    second.register("bob", Traits())
    first.tick()  # the first to tick takes the lead and opens round 1 over both replicas' check-ins
    second.tick()
    yield first, second, clock
    for coordinator in (first, second):
        stop(coordinator)


def test_updates_accepted_at_either_replica_make_one_version(pair):
    first, second, _ = pair
    offers = {"alice": first.poll("alice", Traits()), "bob": second.poll("bob", Traits())}
    assert first.leader is not None and second.leader is None
    assert {o.round for o in offers.values()} == {1} and offers["bob"].version == 0
    # Execute: each client uploads at the replica it checked in at; only the leader's tick closes the round
    upload(first, "alice", A, offers["alice"])
    upload(second, "bob", B, offers["bob"])
    second.tick()
    still_open = second.open_round_number
    first.tick()
    # Assert: version 1 = initial + mean(A, B), seen by both replicas
    assert still_open == 1
    np.testing.assert_allclose(first.state.global_vector, INITIAL + (A + B) / 2, rtol=1e-6)
    second.tick()
    assert second.state.version == 1 and second.state.global_vector.tobytes() == first.state.global_vector.tobytes()
    assert first.open_round_number == 2  # the leader opened the next round


def test_the_leader_dies_mid_round_and_the_other_replica_completes_it_losing_nothing(pair):
    first, second, _ = pair
    offers = {"alice": first.poll("alice", Traits()), "bob": second.poll("bob", Traits())}
    upload(first, "alice", A, offers["alice"])
    # Execute: the leader dies with alice's update accepted; bob's goes to the other replica, which takes the lead
    stop(first)
    upload(second, "bob", B, offers["bob"])
    second.tick()
    # Assert
    assert second.leader is not None
    np.testing.assert_allclose(second.state.global_vector, INITIAL + (A + B) / 2, rtol=1e-6)
    with second.store.session() as session:
        assert {u.client_id for u in db.accepted_updates(session, 1)} == {"alice", "bob"}
        assert session.get(db.RoundRow, 1).status == "closed"


def test_a_round_marked_closing_takes_no_upload_and_the_next_leader_finishes_it(pair):
    first, second, _ = pair
    offers = {"alice": first.poll("alice", Traits()), "bob": second.poll("bob", Traits())}
    upload(first, "alice", A, offers["alice"])
    first._begin_close(1)  # the leader marks the round closing, then dies before it re-folds
    stop(first)
    # Execute
    with pytest.raises(Refused) as refused:
        upload(second, "bob", B, offers["bob"])
    second.tick()
    # Assert: bob was late (nothing of his kept); the round closed with alice's update alone
    assert (refused.value.status, refused.value.code) == (409, "round_not_open")
    np.testing.assert_allclose(second.state.global_vector, INITIAL + A, rtol=1e-6)
    with second.store.session() as session:
        assert [u.client_id for u in db.accepted_updates(session, 1)] == ["alice"]
        assert session.get(db.TaskRow, (1, "bob")).status == "failed"
    assert not any(second.blobs.staging.iterdir())


def test_a_replay_at_the_other_replica_and_a_stranger_are_refused(pair):
    first, second, _ = pair
    offer = first.poll("alice", Traits())
    upload(first, "alice", A, offer)
    with pytest.raises(Refused) as replay:
        upload(second, "alice", A, offer)
    with pytest.raises(Refused) as stranger:
        second.precheck("carol", 1, 0)
    assert (replay.value.status, replay.value.code) == (409, "already_answered")
    assert (stranger.value.status, stranger.value.code) == (403, "not_in_cohort")
    with second.store.session() as session:
        assert len(db.accepted_updates(session, 1)) == 1


def test_replicas_and_a_single_coordinator_refuse_each_other(tmp_path, postgres_url):
    store = Store(postgres_url)
    lock = hold_instance(tmp_path / "a", store.engine, postgres_url, replica=True)
    other = hold_instance(tmp_path / "b", store.engine, postgres_url, replica=True)  # replicas admit each other
    with pytest.raises(AlreadyServing, match="a single coordinator|another fedlm serve"):
        hold_instance(tmp_path / "c", store.engine, postgres_url)
    for held in (lock, other):
        held.release()
    single = hold_instance(tmp_path / "c", store.engine, postgres_url)
    with pytest.raises(AlreadyServing):
        hold_instance(tmp_path / "d", store.engine, postgres_url, replica=True)
    single.release()
    store.dispose()


def test_replicas_need_postgresql_and_refuse_what_they_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match=r"server\.replica: replicas share their rounds through one PostgreSQL"):
        settings_from_dict({"server": {"replica": True}}, root=tmp_path)
    (tmp_path / "run.toml").write_text('[model]\nname = "tiny"\n[strategy]\nclip_norm = 1.0\nweighting = "uniform"\n'
                                      '[secagg]\nenabled = true\n')
    settings = settings_from_dict({"server": {"replica": True, "run_config": "run.toml",
                                              "database_url": "postgresql+psycopg://x@127.0.0.1/y"}}, root=tmp_path)
    with pytest.raises(ConfigError, match=r"secagg\.enabled: server\.replica = true does not run secure aggregation"):
        settings.run_config()


def test_a_single_coordinator_is_unchanged_by_the_replica_module(tmp_path, postgres_url):
    coordinator = replica(tmp_path, postgres_url, FakeClock(), 1, cls=Coordinator)
    with coordinator.store.session() as session:
        assert [v.version for v in session.scalars(select(db.VersionRow))] == [0]
    coordinator.store.dispose()


def test_closing_a_round_that_is_no_longer_open_changes_nothing(pair):
    # Prepare: round 1 closes normally
    first, second, _ = pair
    offers = {"alice": first.poll("alice", Traits()), "bob": second.poll("bob", Traits())}
    upload(first, "alice", A, offers["alice"])
    upload(second, "bob", B, offers["bob"])
    first.tick()
    # Execute: a replica that still thinks round 1 is due tries to close it again
    began = second._begin_close(1)
    second._finish_close(1, "stale view")
    # Assert
    assert began is False
    with second.store.session() as session:
        assert [(r.round, r.status) for r in session.scalars(select(db.RoundRow).order_by(db.RoundRow.round))] == [
            (1, "closed"), (2, "open")]
        assert db.latest_version(session).version == 1
