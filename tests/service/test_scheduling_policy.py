"""Eligibility, over-selection and fairness of cohort selection; the scheduling seen through the API."""

from __future__ import annotations

import pytest

from fedlm.service.scheduling import Traits, ineligibility, invited_count, select_cohort
from fedlm.service.settings import SchedulingSection

from conftest import build_service

POLICY = SchedulingSection(require_charging=True, require_unmetered=True, min_free_memory_mb=512, regions=("eu", "us"))
GOOD = Traits(charging=True, unmetered=True, free_memory_mb=1024, region="eu")


@pytest.mark.parametrize("traits, reason", [
    (GOOD, None),
    (Traits(False, True, 1024, "eu"), "charging"),
    (Traits(True, False, 1024, "eu"), "unmetered"),
    (Traits(True, True, 100, "eu"), "512 MB"),
    (Traits(True, True, 1024, "apac"), "'apac'"),
])
def test_eligibility_names_the_unmet_rule(traits, reason):
    why = ineligibility(traits, POLICY)
    assert why is None if reason is None else reason in why


def test_over_selection_invites_ceil_of_target_times_one_plus_fraction():
    assert [invited_count(10, f) for f in (0.0, 0.3, 0.25, 1.0)] == [10, 13, 13, 20]
    assert invited_count(3, 0.3) == 4  # 3.9 rounds up


def test_fairness_prefers_clients_that_took_part_least_recently():
    available = ["a", "b", "c", "d", "e"]
    last_round = {"a": 5, "b": 0, "c": 3, "d": 5, "e": 1}
    assert select_cohort(available, last_round, size=3, seed=1, round=6) == ("b", "c", "e")


def test_ties_are_broken_by_the_seed_and_reproducibly():
    available = [f"c{i}" for i in range(20)]
    picks = {select_cohort(available, {}, size=5, seed=s, round=1) for s in range(8)}
    assert select_cohort(available, {}, size=5, seed=3, round=1) == select_cohort(available, {}, size=5, seed=3, round=1)
    assert len(picks) > 1


def test_ineligible_clients_are_never_invited(tmp_path):
    # Prepare: the policy wants charging devices; carol is not charging
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", names=("alice", "bob", "carol"))
    service.coordinator.scheduling = SchedulingSection(require_charging=True)
    # Execute
    for name, charging in (("alice", True), ("bob", True), ("carol", False)):
        service.clients[name].post("/v1/clients/register", json={"charging": charging})
    tasks = {n: service.clients[n].post("/v1/tasks/next", json={"charging": n != "carol"}).json()["task"] for n in ("carol", "alice", "bob")}
    # Assert
    assert service.coordinator.rnd.cohort == ("alice", "bob")
    assert tasks["carol"] is None and tasks["alice"]["round"] == 1


def test_no_round_opens_until_enough_eligible_clients_are_available(tmp_path):
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    service.clients["alice"].post("/v1/clients/register", json={})
    assert service.clients["alice"].post("/v1/tasks/next", json={}).json()["task"] is None
    assert service.coordinator.rnd is None
    service.clock.now += 31  # alice's check-in is stale by the time bob arrives
    service.clients["bob"].post("/v1/clients/register", json={})
    assert service.clients["bob"].post("/v1/tasks/next", json={}).json()["task"] is None
    assert service.coordinator.rnd is None


def test_over_selected_round_closes_at_target_and_refuses_the_straggler(tmp_path):
    from fedlm.updates import wire
    import numpy as np

    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", over_selection=0.5)
    for name in ("alice", "bob", "carol"):
        service.clients[name].post("/v1/clients/register", json={})
    service.clients["alice"].post("/v1/tasks/next", json={})
    assert len(service.coordinator.rnd.cohort) == 3  # ceil(2 * 1.5)
    body = wire.serialize_dense(np.ones(6, np.float32))
    codes = [service.clients[n].post("/v1/rounds/1/updates", params={"version": 0, "num_samples": 1}, content=body).status_code
             for n in ("alice", "bob", "carol")]
    assert codes == [200, 200, 409] and service.coordinator.state.version == 1
