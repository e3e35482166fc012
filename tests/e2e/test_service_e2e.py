"""End to end over the network: `fedlm serve` and five `fedlm join` processes on loopback, mTLS, SecAgg+.

Three rounds on the tiny model with secagg.enabled = true. A sixth cohort member, the
"gate", runs the same worker loop (client_worker.take_part) in a thread of this test with
a stand-in trainer that holds its round-2 training until released: the mask stage of
round 2 cannot close without it, so the server is surely killed (SIGKILL) mid-mask, with
the five processes' masked inputs accepted. It is started again on the same database:
the SecAgg log replays, the gate is released, the round completes with all six, and
every message accepted before the kill is still there, unchanged. Then the TLS layer
itself: no certificate and a revoked one are refused.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from fedlm.service import certs
from fedlm.service import store as db
from fedlm.service.client_worker import Connection, JoinSettings, take_part

FEDLM = str(Path(sys.executable).parent / "fedlm")
CLIENTS = [f"client-{i}" for i in range(5)]
GATE = "gate"
WORDS = "the quick brown fox jumps over a lazy dog while seven ravens sing of rivers and stone".split()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_text(folder: Path, seed: int) -> None:
    folder.mkdir(parents=True)
    lines = [" ".join(WORDS[(seed + 3 * i + j) % len(WORDS)] for j in range(12)) for i in range(40)]
    (folder / "notes.txt").write_text("\n\n".join(lines))


def wait_for(predicate, timeout: float, what: str, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_gate(root: Path, server: str, hold_round: int) -> tuple[threading.Thread, threading.Event, dict]:
    """A cohort member run by the test: the real worker loop (take_part) as client GATE, with a stand-in trainer that
    holds its `hold_round` training until the event is set; the dict gets "sent" (its updates that counted) at the end.
    `server` may list several replicas' URLs."""
    release, result = threading.Event(), {}
    folder = root / "certs" / "clients"
    settings = JoinSettings(server=server, data=root, cert=folder / f"{GATE}.pem", key=folder / f"{GATE}.key",
                            ca=root / "certs" / "ca.pem")

    def train(task, global_vector):
        if task["round"] == hold_round:
            release.wait(120)
        return np.full(global_vector.size, 1e-3, np.float32), 1, {"train_loss": 1.0}

    def run():
        conn = Connection(settings)
        conn.request("POST", "/v1/clients/register", json={})
        result["sent"] = take_part(conn, GATE, train, settings.traits)
        conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, release, result


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        certs.init_ca(root / "certs")
        for i, name in enumerate(CLIENTS):
            certs.issue_client(root / "certs", name)
            write_text(root / "data" / name, i)
        certs.issue_client(root / "certs", GATE)
        (root / "run.toml").write_text(
            '[model]\nname = "tiny"\n[data]\nseq_len = 32\n[federation]\nrounds = 3\nclients_per_round = 6\n'
            "[client]\nlocal_steps = 3\nbatch_size = 2\nlr = 0.005\n"
            '[strategy]\nclip_norm = 1.0\nweighting = "uniform"\n[secagg]\nenabled = true\n')
        (root / "server.toml").write_text(
            f'[server]\nport = {self.port}\ndata_dir = "state"\nrun_config = "run.toml"\ntick_seconds = 0.2\n'
            "[secagg]\nadvertise_seconds = 60\nshare_seconds = 60\nmask_seconds = 120\nunmask_seconds = 60\n")
        self.engine = create_engine(f"sqlite:///{root / 'state' / 'fedlm.db'}")
        self.server: subprocess.Popen | None = None
        self.clients: dict[str, subprocess.Popen] = {}

    def start_server(self) -> None:
        log = open(self.root / "server.log", "ab")
        self.server = subprocess.Popen([FEDLM, "serve", "--config", str(self.root / "server.toml")], stdout=log, stderr=log)
        wait_for(self.healthy, 60, "the server to answer")

    def http(self, name: str | None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.root / "certs" / "ca.pem"))
        if name is not None:
            context.load_cert_chain(self.root / "certs" / "clients" / f"{name}.pem", self.root / "certs" / "clients" / f"{name}.key")
        return httpx.Client(base_url=f"https://127.0.0.1:{self.port}", verify=context, timeout=10)

    def healthy(self) -> bool:
        try:
            with self.http(CLIENTS[0]) as client:
                return client.get("/v1/health").status_code == 200
        except httpx.TransportError:
            return False

    def start_clients(self) -> None:
        for name in CLIENTS:
            folder = self.root / "certs" / "clients"
            log = open(self.root / f"{name}.log", "ab")
            self.clients[name] = subprocess.Popen(
                [FEDLM, "join", "--server", f"https://127.0.0.1:{self.port}", "--data", str(self.root / "data" / name),
                 "--cert", str(folder / f"{name}.pem"), "--key", str(folder / f"{name}.key"),
                 "--ca", str(self.root / "certs" / "ca.pem")], stdout=log, stderr=log)

    def start_gate(self, hold_round: int) -> threading.Event:
        """The sixth member: the real worker loop, a stand-in trainer that waits in `hold_round` until released."""
        self.gate, release, self.gate_result = start_gate(self.root, f"https://127.0.0.1:{self.port}", hold_round)
        return release

    @property
    def gate_sent(self) -> int | None:
        return self.gate_result.get("sent")

    def rows(self, kind, **where):
        with Session(self.engine) as session:
            query = select(kind)
            for key, value in where.items():
                query = query.where(getattr(kind, key) == value)
            return list(session.scalars(query))

    def stop(self) -> None:
        for process in [*self.clients.values(), self.server]:  # the gate thread is a daemon
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("e2e"))
    try:
        yield cluster
    finally:
        cluster.stop()


def logged(cluster, round):
    return sorted((m.id, m.kind, m.client_id, m.body) for m in cluster.rows(db.SecAggMessageRow, round=round))


def test_three_secagg_rounds_survive_a_server_kill_mid_mask_stage(cluster):
    # Prepare: round 2's mask stage waits for the gate, whose training is held
    cluster.start_server()
    cluster.start_clients()
    release = cluster.start_gate(hold_round=2)
    wait_for(lambda: len(cluster.rows(db.UpdateRow, round=2)) == len(CLIENTS), 90, "the five round-2 masked inputs")
    # Execute: kill -9 mid-mask, restart on the same database, release the gate
    cluster.server.send_signal(signal.SIGKILL)
    cluster.server.wait()
    before = {(u.client_id, u.sha256) for u in cluster.rows(db.UpdateRow, round=2)}
    log_before = logged(cluster, 2)
    open_rounds = [(r.round, r.stage) for r in cluster.rows(db.RoundRow, status="open")]
    cluster.start_server()
    release.set()
    codes = {name: process.wait(timeout=120) for name, process in cluster.clients.items()}
    cluster.gate.join(60)
    # Assert
    assert open_rounds == [(2, "mask")] and {c for c, _ in before} == set(CLIENTS)
    assert codes == dict.fromkeys(CLIENTS, 0), [(cluster.root / f"{n}.log").read_text()[-2000:] for n, c in codes.items() if c]
    assert cluster.gate_sent == 3
    after = {(u.client_id, u.sha256) for u in cluster.rows(db.UpdateRow, round=2)}
    assert before <= after and {c for c, _ in after} == {*CLIENTS, GATE}  # nothing accepted was lost
    assert logged(cluster, 2)[: len(log_before)] == log_before  # the SecAgg log kept, unchanged, and continued
    assert [(r.round, r.status, r.stage) for r in cluster.rows(db.RoundRow)] == [(r, "closed", "unmask") for r in (1, 2, 3)]
    versions = cluster.rows(db.VersionRow)
    assert [(v.version, v.metrics.get("accepted")) for v in versions] == [(0, None), (1, 6), (2, 6), (3, 6)]
    assert len({v.global_sha256 for v in versions}) == 4  # every round moved the global
    assert all("update_norm" not in u.metrics and "unclipped" not in u.metrics for u in cluster.rows(db.UpdateRow))
    assert any(a.event == "recovered" for a in cluster.rows(db.AuditRow))


def test_no_certificate_gets_a_401_and_a_revoked_one_a_403_over_tls(cluster):
    # Prepare
    if cluster.server is None or cluster.server.poll() is not None:
        cluster.start_server()
    certs.revoke(cluster.root / "certs", cluster.root / "certs" / "clients" / "client-0.pem")
    # Execute
    with cluster.http(None) as anonymous:
        nameless = anonymous.get("/v1/status")
        nameless_metrics = anonymous.get("/metrics")
    with cluster.http("client-0") as revoked:
        refused = revoked.get("/v1/status")
    with cluster.http("client-1") as valid:
        allowed = valid.get("/v1/status")
        metrics = valid.get("/metrics")
    # Assert
    assert (nameless.status_code, nameless.json()["error"]) == (401, "no_client_certificate")
    assert nameless_metrics.status_code == 401
    assert (refused.status_code, refused.json()["error"]) == (403, "revoked_certificate")
    assert allowed.status_code == 200 and allowed.json()["finished"] is True
    assert "fedlm_rounds_done 3.0" in metrics.text
