"""The same round, refusal and restart on PostgreSQL (the store's other backend).

Reads the server URL from FEDLM_TEST_POSTGRES_URL (default: the local trust-auth server)
and makes a fresh database for the test; skips, saying why, when no server answers.
"""

from __future__ import annotations

import numpy as np

from fedlm.service import store as db
from fedlm.updates import wire

from conftest import INITIAL, build_service


def test_round_refusal_and_restart_on_postgres(tmp_path, postgres_url):
    # Prepare
    service = build_service(tmp_path, postgres_url)
    for name in ("alice", "bob"):
        service.clients[name].post("/v1/clients/register", json={})
        service.clients[name].post("/v1/tasks/next", json={})
    delta = np.arange(6, dtype=np.float32)
    post = lambda name, body: service.clients[name].post(  # noqa: E731
        "/v1/rounds/1/updates", params={"version": 0, "num_samples": 2}, content=body)
    # Execute
    accepted = post("alice", wire.serialize_dense(delta))
    replay = post("alice", wire.serialize_dense(delta))
    service.coordinator.store.dispose()
    restarted = service.restart()
    last = post("bob", wire.serialize_dense(-delta / 2))
    # Assert
    assert (accepted.status_code, replay.status_code, last.status_code) == (200, 409, 200)
    np.testing.assert_allclose(restarted.state.global_vector, INITIAL + (delta - delta / 2) / 2, rtol=1e-6)
    with restarted.store.session() as session:
        assert [v.version for v in db.versions(session)] == [0, 1]
        assert db.tasks_of(session, 1) == {"alice": "accepted", "bob": "accepted"}
    restarted.store.dispose()
