"""Compressed uploads on the wire: the `fedlm join` loop (take_part) against the real app, in process.

The bytes are counted on the ASGI receive channel, i.e. what the HTTP layer hands the app:
they must equal the `bytes_up` the client reports and the server stores, and be the
compressed size. The committed global must equal the round engine's fold of the vectors
the clients decoded in place (what the simulation folds), bit for bit, folded in the order
the coordinator accepted them (BLAS saxpy may fuse multiply-adds, so order can move an ulp).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fedlm.config import RunConfig, apply_overrides, config_from_dict
from fedlm.core.types import Task, Update
from fedlm.server.rounds import accept_update, close_round, initial_state, open_round
from fedlm.service import certs
from fedlm.service import store as db
from fedlm.service.app import create_app
from fedlm.service.blobs import BlobStore
from fedlm.service.client_worker import Connection, take_part
from fedlm.service.coordinator import Coordinator
from fedlm.service.scheduling import Traits
from fedlm.service.settings import RegistrySection, SchedulingSection, SecAggSection
from fedlm.service.store import Store
from fedlm.service.tls import with_tls_extension
from fedlm.updates import wire
from fedlm.updates.build import build_pipeline
from fedlm.updates.client import make_wire_encoder

from conftest import FakeClock, client_for

SIZE = 4096
NAMES = ("alice", "bob")
ROUNDS = 2
INITIAL = np.random.default_rng(7).normal(size=SIZE).astype(np.float32)
MODES = {
    "8-bit": {"quantize_bits": 8, "chunk": 256},
    "top-k + rotated 4-bit": {"sparsify": "top_k", "fraction": 0.25, "quantize_bits": 4, "chunk": 128, "rotate": True},
    "random mask": {"sparsify": "random", "fraction": 0.25},
}


def make_run(compression: dict) -> RunConfig:
    base = {"model": {"name": "tiny"}, "federation": {"rounds": ROUNDS, "clients_per_round": len(NAMES)},
            "compression": compression}
    return apply_overrides(RunConfig(), base)


def pipeline_of(run: RunConfig):
    return build_pipeline(run.strategy, run.lora, None, None, run.compression)


def counting(app, sink: list[tuple[str, int]]):
    """The app, noting the body bytes of every upload as the ASGI receive channel delivers them."""
    async def counted(scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/updates"):
            return await app(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            return message

        await app(scope, counting_receive, send)
        sink.append((scope["path"], seen))

    return counted


def delta_of(name: str, round: int) -> np.ndarray:
    return np.random.default_rng([sum(name.encode()), round]).normal(scale=0.1, size=SIZE).astype(np.float32)


def wire_trainer(conn: Connection, name: str, decoded: dict):
    """The client steps built from /v1/config (as service.local_trainer does) on a fixed delta per round;
    notes the vector the encoder decoded in place, which is what the simulation would fold."""
    run = config_from_dict(conn.request("GET", "/v1/config").json()["run"])
    encode = make_wire_encoder(pipeline_of(run), seed=run.run.seed)
    residual = np.zeros(SIZE, np.float32) if run.compression.sparsify == "top_k" else None

    def train(task, global_vector):
        vector = delta_of(name, task["round"])
        metrics, payload = encode(vector, Task(task["round"], task["version"], name, task["clip_norm"]), residual)
        decoded[(task["round"], name)] = vector.copy()
        return payload, 3, metrics

    return train


def serve(tmp_path, run: RunConfig):
    certs.init_ca(tmp_path / "certs")
    coordinator = Coordinator(Store(f"sqlite:///{tmp_path / 'wire.db'}"), BlobStore(tmp_path / "blobs"), run=run,
                              pipeline=pipeline_of(run), initial_global=INITIAL,
                              scheduling=SchedulingSection(deadline_seconds=100.0), registry=RegistrySection(),
                              clock=FakeClock(), secagg=SecAggSection())
    verifier = certs.ClientVerifier(tmp_path / "certs" / certs.CA_CERT, tmp_path / "certs" / certs.CRL)
    app = create_app(coordinator, verifier, max_upload_bytes=2**20, population=0, tick_seconds=0.02)
    tls = {name: client_for(app, certs.issue_client(tmp_path / "certs", name)[0]).tls for name in NAMES}
    return coordinator, app, tls


def join_all(app, tls, counted: dict, decoded: dict) -> dict[str, int]:
    sent: dict[str, int] = {}

    def worker(name: str) -> None:
        conn = Connection.__new__(Connection)  # the retrying request loop, over the in-process app instead of HTTPS
        conn.http = TestClient(with_tls_extension(counting(app, counted.setdefault(name, [])), tls[name]))
        conn.settings, conn.delay = type("Settings", (), {"give_up_after": 5.0})(), lambda attempt: 0.01
        conn.request("POST", "/v1/clients/register", json={})
        sent[name] = take_part(conn, name, wire_trainer(conn, name, decoded), Traits())

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in NAMES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return sent


def simulated_global(run: RunConfig, decoded: dict, arrivals: list[tuple[int, str]]) -> np.ndarray:
    """The round engine's fold of the decoded vectors, in arrival order: what the simulation computes."""
    pipeline = pipeline_of(run)
    state = initial_state(INITIAL, pipeline)
    for round in range(1, ROUNDS + 1):
        rnd = open_round(state, NAMES, pipeline)
        for name in (name for r, name in arrivals if r == round):
            accept_update(rnd, Update(round, state.version, name, 3, decoded[(round, name)], {}))
        state, _ = close_round(state, rnd)
    return state.global_vector


@pytest.mark.parametrize("mode", MODES)
def test_join_uploads_the_compressed_payload_and_the_server_folds_what_the_simulation_does(tmp_path, mode):
    # Prepare
    run = make_run(MODES[mode])
    coordinator, app, tls = serve(tmp_path, run)
    counted, decoded = {}, {}
    # Execute
    sent = join_all(app, tls, counted, decoded)
    # Assert: every upload's bytes on the wire are the stored bytes_up and blob size, and compressed
    assert sent == dict.fromkeys(NAMES, ROUNDS) and coordinator.state.version == ROUNDS
    with coordinator.store.session() as session:
        stored = list(session.scalars(select(db.UpdateRow).order_by(db.UpdateRow.id)))
        rows = {(r.round, r.client_id): (r.metrics["bytes_up"], r.size) for r in stored}
        arrivals = [(r.round, r.client_id) for r in stored]
    on_wire = {(int(path.split("/")[3]), name): n for name, seen in counted.items() for path, n in seen}
    assert on_wire.keys() == rows.keys() and len(rows) == ROUNDS * len(NAMES)
    for key, n in on_wire.items():
        assert rows[key] == (n, n)
    np.testing.assert_array_equal(coordinator.state.global_vector, simulated_global(run, decoded, arrivals))
    assert not np.array_equal(coordinator.state.global_vector, INITIAL)


def test_eight_bit_upload_is_about_a_quarter_of_the_dense_one(tmp_path):
    run = make_run(MODES["8-bit"])
    _, app, tls = serve(tmp_path, run)
    counted: dict = {}
    join_all(app, tls, counted, {})
    sizes = {n for seen in counted.values() for _, n in seen}
    # 4096 one-byte codes + 16 float32 scales + header, against 4096 float32 + header: 3.93x smaller
    assert sizes == {16 + 64 + SIZE} and wire.dense_bytes(SIZE) / sizes.pop() == pytest.approx(3.93, abs=0.01)


def test_a_dense_upload_to_a_quantizing_run_is_refused_naming_both_kinds(tmp_path):
    # Prepare: round 1 open, alice invited
    run = make_run(MODES["8-bit"])
    coordinator, app, tls = serve(tmp_path, run)
    alice = TestClient(with_tls_extension(app, tls["alice"]))
    for name in NAMES:
        TestClient(with_tls_extension(app, tls[name])).post("/v1/clients/register", json={})
    task = alice.post("/v1/tasks/next", json={}).json()["task"]
    before = coordinator.state.global_vector.copy()
    # Execute
    response = alice.post(f"/v1/rounds/{task['round']}/updates", content=wire.serialize_dense(np.zeros(SIZE, np.float32)),
                          params={"version": task["version"], "num_samples": 1})
    # Assert: 400 naming both kinds; the round holds no update and nothing was stored
    assert response.status_code == 400 and response.json()["error"] == "malformed_update"
    assert "sends quantized payloads; got a dense payload" in response.json()["detail"]
    assert coordinator.rnd.weights == {} and np.array_equal(coordinator.state.global_vector, before)
    with coordinator.store.session() as session:
        assert list(session.scalars(select(db.UpdateRow))) == []
