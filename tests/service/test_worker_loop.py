"""The `fedlm join` loop (client_worker.take_part) against the real app in process, one thread per client.

A stand-in trainer returns a fixed update per client, so the committed globals have
closed forms: plain FedAvg rounds move the global by the sample-weighted mean; SecAgg
rounds by the uniform mean of the quantized updates (within the encoding's resolution).
"""

from __future__ import annotations

import threading
import time

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import select

from fedlm.service import certs
from fedlm.service import store as db
from fedlm.service.app import create_app
from fedlm.service.client_worker import Connection, take_part
from fedlm.service.scheduling import Traits
from fedlm.service.tls import with_tls_extension

from conftest import INITIAL, MAX_UPLOAD, build_service
from secagg_parties import SECURE


def update_of(name: str) -> np.ndarray:
    return np.full(INITIAL.size, 0.1 * (1 + sum(name.encode()) % 4), np.float32)


def in_process_connection(service, name: str, app) -> Connection:
    conn = Connection.__new__(Connection)  # the retrying request loop, over the in-process app instead of HTTPS
    conn.http = TestClient(with_tls_extension(app, service.clients[name].tls))
    folder = service.root / "certs"  # the client's certificate and key sign its SecAgg messages; the CA checks its neighbours'
    conn.settings = type("Settings", (), {"give_up_after": 5.0, "cert": folder / "clients" / f"{name}.pem",
                                          "key": folder / "clients" / f"{name}.key", "ca": folder / certs.CA_CERT})()
    conn.delay = lambda attempt: 0.01
    return conn


def run_workers(service, names) -> dict[str, int]:
    verifier = certs.ClientVerifier(service.root / "certs" / certs.CA_CERT, service.root / "certs" / certs.CRL)
    app = create_app(service.coordinator, verifier, max_upload_bytes=MAX_UPLOAD, population=0, tick_seconds=0.02)
    sent: dict[str, int] = {}

    def worker(name: str) -> None:
        conn = in_process_connection(service, name, app)
        conn.request("POST", "/v1/clients/register", json={})
        sent[name] = take_part(conn, name, lambda task, global_vector: (update_of(name), 2, {"train_loss": 1.0}), Traits())

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return sent


def test_worker_loop_runs_three_plain_rounds(tmp_path):
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'plain.db'}", names=("alice", "bob"), clients_per_round=2)
    sent = run_workers(service, ("alice", "bob"))
    mean = (update_of("alice") + update_of("bob")) / 2  # equal samples: the weighted mean is the plain mean
    assert sent == {"alice": 3, "bob": 3} and service.coordinator.state.version == 3
    np.testing.assert_allclose(service.coordinator.state.global_vector, INITIAL + 3 * mean, rtol=1e-6)


def test_worker_loop_runs_three_secagg_rounds(tmp_path, monkeypatch):
    monkeypatch.setattr("fedlm.service.secagg_worker.POLL_SECONDS", 0.01)
    names = ("c0", "c1", "c2", "c3")
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'secure.db'}", names=names, clients_per_round=4, overrides=SECURE)
    sent = run_workers(service, names)
    mean = np.mean([update_of(n) for n in names], axis=0)
    resolution = 4 * 10.0 / 2**31  # clients * bound / range: one rounding step of the sum
    assert sent == dict.fromkeys(names, 3) and service.coordinator.state.version == 3
    np.testing.assert_allclose(service.coordinator.state.global_vector, INITIAL + 3 * mean, atol=3 * resolution + 1e-6)


def test_worker_loop_under_fedbuff_counts_a_client_that_answers_late(tmp_path):
    # Prepare: K = 2, four steps; carol holds her first task until the server is two versions on
    overrides = {"federation": {"rounds": 4}, "strategy": {"weighting": "uniform"},
                 "policy": {"kind": "fedbuff", "buffer_size": 2, "concurrency": 3, "max_staleness": 4}}
    names = ("alice", "bob", "carol")
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'fedbuff.db'}", names=names, overrides=overrides)
    verifier = certs.ClientVerifier(service.root / "certs" / certs.CA_CERT, service.root / "certs" / certs.CRL)
    app = create_app(service.coordinator, verifier, max_upload_bytes=MAX_UPLOAD, population=0, tick_seconds=0.02)
    sent: dict[str, int] = {}

    def train(name, task, global_vector):
        if name == "carol" and task["version"] == 0:
            deadline = time.monotonic() + 30
            while service.coordinator.state.version < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        return update_of(name), 1, {"train_loss": 1.0}

    def worker(name: str) -> None:
        conn = in_process_connection(service, name, app)
        conn.request("POST", "/v1/clients/register", json={})
        sent[name] = take_part(conn, name, lambda task, vector: train(name, task, vector), Traits())

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Assert: four versions; carol's version-0 update was folded two or more versions late, and counted
    with service.coordinator.store.session() as session:
        carol = session.scalars(select(db.UpdateRow).where(db.UpdateRow.client_id == "carol")
                                .order_by(db.UpdateRow.id)).first()
        staleness = [v.metrics.get("staleness_max") for v in db.versions(session) if v.version > 0]
    assert service.coordinator.state.version == 4 and sum(sent.values()) == 8
    assert carol.version == 0 and carol.round >= 3 and max(staleness) >= 2
