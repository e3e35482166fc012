"""End to end over the network under FedBuff: `fedlm serve` and three `fedlm join` processes, one slowed on purpose.

policy.kind = "fedbuff", buffer_size 2: the server steps every two updates, from whichever
clients answer. The slow client joins first; as soon as it holds a task the test stops its process
(SIGSTOP: a real client that stalls mid-task, as a phone put to sleep does), lets the two
others move the global on by two versions, and wakes it (SIGCONT). Its update, computed
from a version the server has left behind, must still be accepted within
policy.max_staleness, folded with its staleness into a later version, and the run must
finish with every process exiting 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from fedlm.service import certs
from fedlm.service import store as db

from test_service_e2e import FEDLM, free_port, wait_for, write_text

FAST = ["fast-0", "fast-1"]
SLOW = "slow"
ROUNDS = 8


class FedBuffCluster:
    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        certs.init_ca(root / "certs")
        for i, name in enumerate([*FAST, SLOW]):
            certs.issue_client(root / "certs", name)
            write_text(root / "data" / name, i)
        (root / "run.toml").write_text(
            f'[model]\nname = "tiny"\n[data]\nseq_len = 32\n[federation]\nrounds = {ROUNDS}\nclients_per_round = 2\n'
            "[client]\nlocal_steps = 3\nbatch_size = 2\nlr = 0.005\n"
            '[strategy]\nweighting = "uniform"\n'
            '[policy]\nkind = "fedbuff"\nbuffer_size = 2\nconcurrency = 3\nmax_staleness = 6\n')
        (root / "server.toml").write_text(
            f'[server]\nport = {self.port}\ndata_dir = "state"\nrun_config = "run.toml"\ntick_seconds = 0.1\n'
            "[scheduling]\ndeadline_seconds = 300\n")
        self.engine = create_engine(f"sqlite:///{root / 'state' / 'fedlm.db'}")
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen([FEDLM, *args], stdout=log, stderr=log)

    def start_server(self) -> None:
        self.start("server", ["serve", "--config", str(self.root / "server.toml")])
        wait_for(lambda: (self.root / "state" / "fedlm.db").exists() and self.versions(), 60, "the server to start")

    def start_client(self, name: str) -> None:
        folder = self.root / "certs" / "clients"
        self.start(name, ["join", "--server", f"https://127.0.0.1:{self.port}", "--data", str(self.root / "data" / name),
                          "--cert", str(folder / f"{name}.pem"), "--key", str(folder / f"{name}.key"),
                          "--ca", str(self.root / "certs" / "ca.pem")])

    def rows(self, kind, *where):
        try:
            with Session(self.engine) as session:
                return list(session.scalars(select(kind).where(*where)))
        except Exception:  # the server is still creating its tables
            return []

    def versions(self) -> list[db.VersionRow]:
        return self.rows(db.VersionRow)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait()


@pytest.fixture
def cluster(tmp_path):
    cluster = FedBuffCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()


def stop_while_holding_a_task(cluster) -> db.TaskRow:
    """SIGSTOP the slow client while it holds a task it has not answered; its task."""
    slow = cluster.processes[SLOW]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        held = cluster.rows(db.TaskRow, db.TaskRow.client_id == SLOW, db.TaskRow.status == "assigned")
        if held:
            slow.send_signal(signal.SIGSTOP)
            time.sleep(0.5)  # an upload already on the wire lands (or is held by the server's read timeout) meanwhile
            task = cluster.rows(db.TaskRow, db.TaskRow.client_id == SLOW, db.TaskRow.round == held[0].round)[0]
            if task.status == "assigned":
                return task
            slow.send_signal(signal.SIGCONT)  # it answered before it stopped: catch its next task
        time.sleep(0.005)
    raise AssertionError(f"the slow client never held a task:\n{cluster.log(SLOW)}")


def test_a_client_slowed_on_purpose_still_contributes_to_a_later_version(cluster):
    # Prepare
    cluster.start_server()
    cluster.start_client(SLOW)  # first: FedBuff has no cohort to wait for, its first task comes as soon as it asks
    task = stop_while_holding_a_task(cluster)
    for name in FAST:
        cluster.start_client(name)
    started_from = cluster.rows(db.RoundRow, db.RoundRow.round == task.round)[0].version
    # Execute: the two fast clients move the global two versions on; then the slow one wakes up
    wait_for(lambda: len(cluster.versions()) > started_from + 2, 120, "two versions past the slow client's task",
             poll=0.05)
    cluster.processes[SLOW].send_signal(signal.SIGCONT)
    codes = {name: cluster.processes[name].wait(timeout=180) for name in [*FAST, SLOW]}
    # Assert: every process finished; the slow client's update was folded late, with its staleness
    assert codes == dict.fromkeys([*FAST, SLOW], 0), {n: cluster.log(n) for n, c in codes.items() if c}
    late = cluster.rows(db.UpdateRow, db.UpdateRow.client_id == SLOW, db.UpdateRow.version == started_from)
    assert len(late) == 1, cluster.log(SLOW)
    folded_into = cluster.rows(db.RoundRow, db.RoundRow.round == late[0].round)[0]
    assert folded_into.version - started_from >= 2  # it trained from a version the server had left two steps behind
    assert folded_into.status == "closed"
    version = next(v for v in cluster.versions() if v.round == folded_into.round)
    assert version.metrics["staleness_max"] >= 2 and version.metrics["accepted"] == 2
    assert cluster.rows(db.TaskRow, db.TaskRow.round == task.round, db.TaskRow.client_id == SLOW)[0].status == "accepted"
    assert [v.version for v in cluster.versions()] == list(range(ROUNDS + 1))
    assert "staleness=" in cluster.log("server") and "accepted" in cluster.log(SLOW)
