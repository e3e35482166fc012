"""The coordinator's API in-process: a round end to end, every refusal path, restart, late updates.

Prepare / Execute / Assert. Every refusal asserts a 4xx JSON body naming what was wrong
and that the round, the tables and the blobs are exactly as before.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save
from sqlalchemy import func, select

from fedlm.service import certs
from fedlm.service import store as db
from fedlm.updates import wire

from conftest import INITIAL, MAX_UPLOAD, client_for, make_app

DELTA_A = np.array([1, 1, 1, 1, 1, 1], np.float32)
DELTA_B = np.array([0, 4, 0, -4, 8, 0], np.float32)


def start_round(service, names=("alice", "bob")):
    for name in names:
        assert service.clients[name].post("/v1/clients/register", json={"charging": True}).status_code == 200
    return {name: service.clients[name].post("/v1/tasks/next", json={}).json()["task"] for name in names}


def upload(service, name, body, *, round=1, version=0, samples=1, headers=None):
    return service.clients[name].post(f"/v1/rounds/{round}/updates", params={"version": version, "num_samples": samples},
                                      content=body, headers=headers or {})


def snapshot(service):
    """Everything a refused upload must leave alone: the round's sums, the tables, the blob files."""
    coordinator = service.coordinator
    rnd = coordinator.rnd
    with coordinator.store.session() as session:
        counts = tuple(session.scalar(select(func.count()).select_from(t)) for t in (db.UpdateRow, db.VersionRow, db.RoundRow))
        tasks = db.tasks_of(session, rnd.round) if rnd else {}
    blobs = sorted(p.name for p in (service.root / "blobs").rglob("*") if p.is_file() and "staging" not in p.parts)
    staging = sorted(p.name for p in (service.root / "blobs" / "staging").iterdir())
    round_state = (rnd.total.tobytes(), dict(rnd.weights), set(rnd.failed)) if rnd else None
    return round_state, counts, tasks, blobs, staging, coordinator.state.version


def test_round_of_two_clients_commits_the_weighted_mean(service):
    # Prepare
    tasks = start_round(service)
    assert tasks["alice"]["round"] == 1 and tasks["bob"]["version"] == 0
    # Execute
    first = upload(service, "alice", wire.serialize_dense(DELTA_A), samples=1, headers={"X-Fedlm-Metrics": '{"train_loss": 2.0}'})
    second = upload(service, "bob", wire.serialize_dense(DELTA_B), samples=3, headers={"X-Fedlm-Metrics": '{"train_loss": 1.0}'})
    # Assert: FedAvg by samples, (1 * A + 3 * B) / 4, added to the initial global
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    expected = INITIAL + (DELTA_A + 3 * DELTA_B) / 4
    np.testing.assert_allclose(service.coordinator.state.global_vector, expected, rtol=1e-6)
    assert service.coordinator.state.version == 1 and service.coordinator.rnd is None
    downloaded = service.clients["alice"].get("/v1/models/1/global")
    assert downloaded.status_code == 200 and downloaded.headers["X-Content-SHA256"] != tasks["alice"]["global_sha256"]
    _, values = wire.deserialize(downloaded.content)
    np.testing.assert_allclose(values["vector"], expected, rtol=1e-6)
    with service.coordinator.store.session() as session:
        version = session.get(db.VersionRow, 1)
        assert version.metrics["train_loss"] == pytest.approx((2.0 * 1 + 1.0 * 3) / 4)
        assert db.production_version(session) == 1
        events = [a.event for a in session.scalars(select(db.AuditRow))]
        assert events.count("update_accepted") == 2 and "round_closed" in events


def test_download_hash_matches_the_task(service):
    tasks = start_round(service)
    response = service.clients["alice"].get("/v1/models/0/global")
    import hashlib

    assert hashlib.sha256(response.content).hexdigest() == tasks["alice"]["global_sha256"] == response.headers["x-content-sha256"]
    assert service.clients["alice"].get("/v1/models/7/global").json()["error"] == "unknown_version"


def test_safetensors_upload_is_accepted_like_the_wire_format(service):
    start_round(service)
    response = upload(service, "alice", save({"update": DELTA_A}))
    assert response.status_code == 200 and response.json()["size"] > 24


NAN = DELTA_A.copy()
NAN[2] = np.nan
INF = DELTA_A.copy()
INF[0] = np.inf
REFUSALS = {
    "no certificate": ("anonymous", wire.serialize_dense(DELTA_A), {}, 401, "no_client_certificate"),
    "not in cohort": ("carol", wire.serialize_dense(DELTA_A), {}, 403, "not_in_cohort"),
    "garbage body": ("alice", b"\x00" * 40, {}, 400, "malformed_update"),
    "too short": ("alice", b"FDLM", {}, 400, "malformed_update"),
    "wrong shape": ("alice", wire.serialize_dense(DELTA_A[:5]), {}, 400, "malformed_update"),
    "truncated": ("alice", wire.serialize_dense(DELTA_A)[:-4], {}, 400, "malformed_update"),
    "wrong dtype": ("alice", save({"update": DELTA_A.astype(np.float64)}), {}, 400, "malformed_update"),
    "two tensors": ("alice", save({"update": DELTA_A, "extra": DELTA_A}), {}, 400, "malformed_update"),
    "oversized": ("alice", b"\x01" * (MAX_UPLOAD + 1), {}, 413, "too_large"),
    "NaN": ("alice", wire.serialize_dense(NAN), {}, 422, "invalid_update"),
    "infinity": ("alice", wire.serialize_dense(INF), {}, 422, "invalid_update"),
    "huge": ("alice", wire.serialize_dense(np.full(6, 3e38, np.float32)), {}, 422, "invalid_update"),
    "wrong round": ("alice", wire.serialize_dense(DELTA_A), {"round": 5}, 404, "round_not_open"),
    "wrong version": ("alice", wire.serialize_dense(DELTA_A), {"version": 3}, 409, "wrong_version"),
    "zero samples": ("alice", wire.serialize_dense(DELTA_A), {"samples": 0}, 422, "invalid_request"),
    "text in metrics": ("alice", wire.serialize_dense(DELTA_A), {"headers": {"X-Fedlm-Metrics": '{"note": "hello"}'}}, 400, "bad_metrics"),
    "metrics not json": ("alice", wire.serialize_dense(DELTA_A), {"headers": {"X-Fedlm-Metrics": "{"}}, 400, "bad_metrics"),
    # red-team finding 8: free text smuggled as a metric's name, or in safetensors metadata, never reaches the store
    "text as a metric name": ("alice", wire.serialize_dense(DELTA_A),
                              {"headers": {"X-Fedlm-Metrics": '{"my password is hunter2": 1.0}'}}, 400, "bad_metrics"),
    "safetensors metadata": ("alice", save({"update": DELTA_A}, metadata={"note": "patient 42 has ..."}), {}, 400,
                             "malformed_update"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_upload_is_4xx_json_and_leaves_state_unchanged(service, case):
    # Prepare
    name, body, options, status, code = REFUSALS[case]
    start_round(service)
    upload(service, "bob", wire.serialize_dense(DELTA_B))  # one accepted update already in the round
    before = snapshot(service)
    # Execute
    response = upload(service, name, body, **options)
    # Assert
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert snapshot(service) == before
    assert "hunter2" not in response.text and "patient" not in response.text  # nor echoed back


def test_replay_is_refused_and_leaves_state_unchanged(service):
    start_round(service, ("alice", "bob", "carol"))  # three available: cohort of two by fairness + seed
    cohort = service.coordinator.rnd.cohort
    first = upload(service, cohort[0], wire.serialize_dense(DELTA_A))
    before = snapshot(service)
    replay = upload(service, cohort[0], wire.serialize_dense(DELTA_B))
    assert first.status_code == 200 and replay.status_code == 409
    assert replay.json()["error"] == "already_answered"
    assert snapshot(service) == before


def test_revoked_and_foreign_certificates_are_refused(service, tmp_path):
    # Prepare
    start_round(service)
    certs.revoke(service.root / "certs", service.root / "certs" / "clients" / "alice.pem")
    certs.init_ca(tmp_path / "other")
    foreign, _ = certs.issue_client(tmp_path / "other", "bob")
    app = make_app(service.coordinator, service.root)
    before = snapshot(service)
    # Execute
    revoked = upload(service, "alice", wire.serialize_dense(DELTA_A))
    impostor = client_for(app, foreign).post("/v1/rounds/1/updates", params={"version": 0, "num_samples": 1},
                                             content=wire.serialize_dense(DELTA_A))
    # Assert
    assert (revoked.status_code, revoked.json()["error"]) == (403, "revoked_certificate")
    assert (impostor.status_code, impostor.json()["error"]) == (403, "untrusted_certificate")
    assert snapshot(service) == before


def test_late_update_after_the_deadline_is_refused(service):
    # Prepare: one of two arrives, then the deadline passes
    start_round(service)
    upload(service, "alice", wire.serialize_dense(DELTA_A), samples=2)
    service.clock.now += 101
    # Execute
    service.coordinator.tick()
    late = upload(service, "bob", wire.serialize_dense(DELTA_B))
    # Assert: the round closed with alice's update alone; bob's is refused cleanly
    assert (late.status_code, late.json()["error"]) == (409, "round_not_open")
    np.testing.assert_allclose(service.coordinator.state.global_vector, INITIAL + DELTA_A, rtol=1e-6)
    with service.coordinator.store.session() as session:
        assert db.tasks_of(session, 1) == {"alice": "accepted", "bob": "failed"}
        assert session.get(db.VersionRow, 1).metrics["closed_by"] == "deadline"


def test_restarted_coordinator_refolds_accepted_updates_bit_for_bit(service):
    # Prepare: alice's update accepted, then the process "dies"
    start_round(service)
    upload(service, "alice", wire.serialize_dense(DELTA_A), samples=1)
    total_before = service.coordinator.rnd.total.copy()
    service.coordinator.store.dispose()
    # Execute
    restarted = service.restart()
    replay = upload(service, "alice", wire.serialize_dense(DELTA_A))
    done = upload(service, "bob", wire.serialize_dense(DELTA_B), samples=3)
    # Assert
    assert restarted.state.version == 1 and done.status_code == 200
    assert replay.json()["error"] == "already_answered"
    np.testing.assert_allclose(restarted.state.global_vector, INITIAL + (DELTA_A + 3 * DELTA_B) / 4, rtol=1e-6)
    assert total_before.tobytes() != np.zeros(6, np.float32).tobytes()


def test_restart_rebuilds_the_same_partial_sum(service):
    start_round(service)
    upload(service, "alice", wire.serialize_dense(DELTA_A), samples=2)
    before = service.coordinator.rnd.total.tobytes(), dict(service.coordinator.rnd.weights)
    after = service.restart().rnd
    assert (after.total.tobytes(), dict(after.weights)) == before


def test_canary_gate_keeps_a_worse_version_but_does_not_promote_it(tmp_path):
    from conftest import build_service

    losses = iter([2.0, 1.0, 1.5])  # version 0 is scored 2.0; round 1 sets production at 1.0; round 2 is 0.5 worse
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", evaluator=lambda v: next(losses), margin=0.1)
    for round in (1, 2):
        start_round(service)
        for name in ("alice", "bob"):
            assert upload(service, name, wire.serialize_dense(DELTA_A), round=round, version=round - 1).status_code == 200
    with service.coordinator.store.session() as session:
        assert [(v.version, v.status) for v in db.versions(session)] == [(0, "promoted"), (1, "promoted"), (2, "held")]
        assert db.production_version(session) == 1
    assert service.coordinator.state.version == 2  # training goes on from the newest version


def test_metrics_count_accepted_and_refused_uploads(service):
    start_round(service)
    upload(service, "alice", wire.serialize_dense(DELTA_A))
    upload(service, "alice", wire.serialize_dense(DELTA_A))
    text = service.clients["alice"].get("/metrics").text
    assert "fedlm_updates_accepted_total 1.0" in text
    assert 'fedlm_updates_refused_total{reason="already_answered"} 1.0' in text


def test_audit_log_holds_hashes_and_sizes_never_contents(service):
    start_round(service)
    body = wire.serialize_dense(np.full(6, 1234.5, np.float32))
    upload(service, "alice", body)
    with service.coordinator.store.session() as session:
        rows = list(session.scalars(select(db.AuditRow)))
    dumped = json.dumps([[r.event, r.client_id, r.size, r.sha256, r.detail] for r in rows])
    accepted = [r for r in rows if r.event == "update_accepted"][0]
    assert accepted.size == len(body) and len(accepted.sha256) == 64
    assert "1234" not in dumped
