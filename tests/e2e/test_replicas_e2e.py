"""End to end: two `fedlm serve` replicas over one PostgreSQL database, the leader killed mid-round.

Replica A starts first and takes the leader lock; replica B joins. Four `fedlm join` processes
name both replicas (two list A first, two B first) and a fifth cohort member, the gate, runs
the worker loop in this test with a trainer that holds its round-2 training until released,
so round 2 cannot close without it. Once the four processes' round-2 updates are accepted,
A (the leader) is killed with SIGKILL. The gate is released; its update goes to B, which
takes the lead, closes round 2 with all five updates and runs round 3; the clients that
talked to A move on to B. Nothing accepted before the kill is lost. Skipped with the reason
where no PostgreSQL answers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from fedlm.service import certs
from fedlm.service import store as db

from postgres_db import scratch_database
from test_service_e2e import FEDLM, GATE, free_port, start_gate, wait_for, write_text

CLIENTS = [f"client-{i}" for i in range(4)]


class Replicas:
    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.ports = {"a": free_port(), "b": free_port()}
        certs.init_ca(root / "certs")
        for i, name in enumerate([*CLIENTS, GATE]):
            certs.issue_client(root / "certs", name)
            write_text(root / "data" / name, i)
        (root / "run.toml").write_text(
            '[model]\nname = "tiny"\n[data]\nseq_len = 32\n[federation]\nrounds = 3\nclients_per_round = 5\n'
            '[client]\nlocal_steps = 2\nbatch_size = 2\nlr = 0.005\n[strategy]\nweighting = "uniform"\n')
        for name, port in self.ports.items():
            (root / f"server-{name}.toml").write_text(
                f'[server]\nport = {port}\ndata_dir = "state"\ndatabase_url = "{url}"\nrun_config = "run.toml"\n'
                "tick_seconds = 0.2\nreplica = true\n[scheduling]\ndeadline_seconds = 300\n")
        self.engine = create_engine(url)
        self.processes: dict[str, subprocess.Popen] = {}

    def urls(self, *order: str) -> str:
        return ",".join(f"https://127.0.0.1:{self.ports[name]}" for name in order)

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen([FEDLM, *args], stdout=log, stderr=log)

    def start_replica(self, name: str) -> None:
        self.start(f"replica-{name}", ["serve", "--config", str(self.root / f"server-{name}.toml")])

    def start_client(self, name: str, first: str) -> None:
        folder = self.root / "certs" / "clients"
        order = (first, "b" if first == "a" else "a")
        self.start(name, ["join", "--server", self.urls(*order), "--data", str(self.root / "data" / name),
                          "--cert", str(folder / f"{name}.pem"), "--key", str(folder / f"{name}.key"),
                          "--ca", str(self.root / "certs" / "ca.pem")])

    def start_gate(self, hold_round: int) -> threading.Event:
        self.gate, release, self.gate_result = start_gate(self.root, self.urls("b", "a"), hold_round)
        return release

    def rows(self, kind, *where):
        try:
            with Session(self.engine) as session:
                return list(session.scalars(select(kind).where(*where)))
        except Exception:  # the first replica is still creating the tables
            return []

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        self.engine.dispose()


@pytest.fixture
def replicas(tmp_path):
    with scratch_database() as url:
        cluster = Replicas(tmp_path, url)
        try:
            yield cluster
        finally:
            cluster.stop()


def test_two_replicas_finish_the_round_when_the_leader_is_killed_mid_round(replicas):
    # Prepare: A leads; B joins; round 2 waits for the gate
    replicas.start_replica("a")
    wait_for(lambda: replicas.rows(db.AuditRow, db.AuditRow.event == "replica_leads"), 90, "replica A to lead",
             poll=0.1)
    replicas.start_replica("b")
    for i, name in enumerate(CLIENTS):
        replicas.start_client(name, "a" if i % 2 == 0 else "b")
    release = replicas.start_gate(hold_round=2)
    wait_for(lambda: len(replicas.rows(db.UpdateRow, db.UpdateRow.round == 2)) == len(CLIENTS), 120,
             "the four round-2 updates", poll=0.1)
    # Execute: kill -9 the leader mid-round, then release the gate
    replicas.processes["replica-a"].send_signal(signal.SIGKILL)
    replicas.processes["replica-a"].wait()
    before = {(u.client_id, u.sha256) for u in replicas.rows(db.UpdateRow, db.UpdateRow.round == 2)}
    open_then = [(r.round, r.status) for r in replicas.rows(db.RoundRow, db.RoundRow.status != "closed")]
    release.set()
    codes = {name: replicas.processes[name].wait(timeout=180) for name in CLIENTS}
    replicas.gate.join(60)
    # Assert: the round completed on B with every update accepted before the kill, and the run finished
    assert open_then == [(2, "open")]
    assert codes == dict.fromkeys(CLIENTS, 0), {n: replicas.log(n) for n, c in codes.items() if c}
    assert replicas.gate_result.get("sent") == 3
    after = {(u.client_id, u.sha256) for u in replicas.rows(db.UpdateRow, db.UpdateRow.round == 2)}
    assert before <= after and {c for c, _ in after} == {*CLIENTS, GATE}
    assert [(r.round, r.status) for r in replicas.rows(db.RoundRow)] == [(1, "closed"), (2, "closed"), (3, "closed")]
    versions = replicas.rows(db.VersionRow)
    assert [(v.version, v.metrics.get("accepted")) for v in versions] == [(0, None), (1, 5), (2, 5), (3, 5)]
    assert len(replicas.rows(db.AuditRow, db.AuditRow.event == "replica_leads")) == 2  # A, then B
    assert replicas.processes["replica-b"].poll() is None, replicas.log("replica-b")
    assert os.path.isdir(replicas.root / "state" / "blobs" / f"staging-{socket.gethostname()}-{replicas.ports['b']}")
