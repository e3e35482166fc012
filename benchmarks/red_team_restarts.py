"""Attacks that need a restart, a second coordinator process or a second database (benchmarks/red_team.py).

Finding 4: accepted updates changed on disk while the coordinator is down (rewritten, truncated), then a restart.
Finding 2: two coordinators on one database: a second `fedlm serve` with its own data directory over the first
one's SQLite file (empty, and a copy of the first's); replicas over one PostgreSQL database (`server.replica =
true`), where an update accepted by the replica that does not lead must be in the version the leader commits, and a
single coordinator must be refused beside them.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from red_team_lab import (
    Lab, Process, Row, describe, first_error_line, free_port, shorten, state_changes, verdict, wait_until,
)
from red_team_uploads import Limits, body_dripped, body_stalled, dense, honest_update, open_round, upload, version_metrics

POSTGRES_URL = os.environ.get("FEDLM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TINY = {"model": {"name": "tiny"}}


def blob_path(lab: Lab, sha: str) -> Path:
    return lab.data_dir / "blobs" / sha[:2] / sha[2:]


def tampered_round(lab: Lab, server: Process, next_config: Path, limits: Limits,
                   cohort: tuple[str, str, str, str]) -> tuple[list[Row], Process]:
    """Round 1 (deadline 30 s): three honest updates accepted, the fourth member's upload stalled and dripped (6b, 6c);
    the server stopped; two accepted blobs rewritten and truncated; the server started on `next_config`."""
    keeper, rewritten, truncated, slow = cohort
    rnd = open_round(lab, cohort)
    start = lab.global_vector(rnd.version, keeper).astype(np.float64)
    shas = {}
    for name in (keeper, rewritten, truncated):
        answer = upload(lab, name, rnd, dense(honest_update(name, rnd.number, rnd.size)))
        answer.raise_for_status()
        shas[name] = answer.json()["sha256"]
    rows = [body_stalled(lab, rnd, slow, limits), body_dripped(lab, rnd, slow, limits)]
    server.stop()
    paths = {name: blob_path(lab, shas[name]) for name in (rewritten, truncated)}
    data = paths[rewritten].read_bytes()
    paths[rewritten].write_bytes(data[:-4] + b"\x00\x00\x80\x7f")  # same length, the last value now +inf
    data = paths[truncated].read_bytes()
    paths[truncated].write_bytes(data[: len(data) // 2])
    before = lab.snapshot()
    server = lab.serve(next_config, name="server-restarted")
    lab.wait_healthy(server)
    wait_until(lambda: lab.status(keeper)["rounds_done"] >= rnd.number, 120, f"round {rnd.number}'s deadline")
    after = lab.snapshot()
    corrupt = dict(lab.query("SELECT client_id, detail FROM audit_log WHERE event = 'update_blob_corrupt'"))
    tasks = dict(lab.query("SELECT client_id, status FROM tasks WHERE round = :r", r=rnd.number))
    log = server.since(0)
    delta = lab.global_vector(rnd.version + 1, keeper).astype(np.float64) - start
    expected = honest_update(keeper, rnd.number, rnd.size).astype(np.float64)
    exact = float(np.abs(delta - expected).max())
    accepted = version_metrics(lab, rnd.version + 1).get("accepted")
    for number, name, damage in (("4a", rewritten, "rewritten (same length, last value +inf)"),
                                 ("4b", truncated, "truncated to half")):
        named = any(" ERROR " in line and str(paths[name]) in line for line in log)
        ok = server.running() and tasks.get(name) == "failed" and str(paths[name]) in corrupt.get(name, "") and named
        ok = ok and accepted == 1 and exact < 1e-6
        rows.append(Row(number, f"{name}'s accepted update {damage} on disk while the server is down; restart",
                        f"serve up; {name}'s task {tasks.get(name)}; audit update_blob_corrupt and an ERROR line "
                        f"naming the file: {'yes' if named else 'no'}",
                        f"{describe(before, after)}; v{rnd.version + 1} = v{rnd.version} + {keeper}'s update alone "
                        f"(max diff {exact:.1e}, accepted={accepted})",
                        "left out and reported with the file named; serve keeps running", verdict(ok)))
    return rows, server


def refused_start(lab: Lab, number: str, attack: str, config: Path, name: str, note: str = "") -> Row:
    before = lab.snapshot()
    process = lab.serve(config, name=name)
    code = process.wait(240)
    process.stop()
    after = lab.snapshot()
    said = first_error_line(process.output())
    ok = code not in (0, None) and not state_changes(before, after)
    return Row(number, attack, f"exit {code}: {shorten(said, 170)}{note}", describe(before, after), "refused; nothing changed",
               verdict(ok))


def shared_sqlite(root: Path) -> list[Row]:
    """A coordinator on its own data directory and SQLite file; then second ones on other data directories over the
    same file: an empty one (2b), and a copy of the first's, started while a round is open (2c)."""
    lab = Lab(root, ("alice", "bob"))
    run = {**TINY, "federation": {"rounds": 2, "clients_per_round": 2}}
    first = lab.serve(lab.write_config("server.toml", run=run, server={}, scheduling={"deadline_seconds": 45}))
    database = {"database_url": lab.url}
    try:
        lab.wait_healthy(first)
        rows = [refused_start(lab, "2b", "a second `fedlm serve` with its own (empty) data_dir over the first's SQLite file",
                              lab.write_config("empty.toml", run=run, server={"port": free_port(), "data_dir": "empty",
                                                                              **database}), "second-serve-2b",
                              " (refused by the missing blob, not by the instance lock)")]
        rnd = open_round(lab, ("alice", "bob"))
        shutil.copytree(lab.data_dir, root / "copy")
        port = free_port()
        copy = lab.write_config("copy.toml", run=run, server={"port": port, "data_dir": "copy", **database})
        before = lab.snapshot()
        rows.append(second_on_a_copy(lab, first, lab.serve(copy, name="second-serve-2c"), port, rnd, before))
        return rows
    finally:
        lab.close()


def second_on_a_copy(lab: Lab, first: Process, second: Process, port: int, rnd, before) -> Row:
    """`second` was just started over `first`'s database with a copy of its data directory (`before`: the state just
    before)."""
    attack = "a second `fedlm serve` over the first's SQLite file, its data_dir a copy of the first's, mid-round"
    expected = "refused: another coordinator holds this database"
    try:
        lab.wait_healthy(second, port=port)
    except RuntimeError:
        after = lab.snapshot()
        said = first_error_line(second.output())
        ok = "already serves" in said and not state_changes(before, after)
        return Row("2c", attack, f"exit {second.process.returncode}: {shorten(said, 170)}", describe(before, after), expected,
                   verdict(ok))
    # it runs: both hold the open round in memory; alice answers the second, bob the first
    to_second = upload(lab, "alice", rnd, dense(honest_update("alice", rnd.number, rnd.size)), port=port)
    to_first = upload(lab, "bob", rnd, dense(honest_update("bob", rnd.number, rnd.size)))
    wait_until(lambda: lab.query("SELECT count(*) FROM model_versions WHERE round = :r", r=rnd.number)[0][0], 90,
               f"round {rnd.number} to close at its deadline")
    after = lab.snapshot()
    time.sleep(2.0)  # the loser's next ticks
    stored = [c for (c,) in lab.query("SELECT client_id FROM updates WHERE round = :r ORDER BY id", r=rnd.number)]
    accepted = version_metrics(lab, rnd.version + 1).get("accepted")
    closer = "the second" if any(f"round {rnd.number} closed" in line for line in second.since(0)) else "the first"
    failing = sum("coordinator tick failed" in line for line in (first.since(0) + second.since(0)))
    return Row("2c", attack,
               f"it started and served beside the first; alice's upload to it: {to_second.status_code}, bob's to the "
               f"first: {to_first.status_code}",
               f"{describe(before, after)}; both updates stored for round {rnd.number} ({stored}), but v{rnd.version + 1} "
               f"(written by {closer}) holds {accepted}: {len(stored) - (accepted or 0)} accepted update lost; "
               f"{failing} 'coordinator tick failed' errors since (UNIQUE constraint on model_versions)",
               expected, verdict(False))


def scratch_postgres() -> str | None:
    """A new database on the PostgreSQL server of FEDLM_TEST_POSTGRES_URL (None where none answers)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"fedlm_redteam_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception:  # no server, no role, no permission: the rows say "skipped"
        return None
    finally:
        admin.dispose()
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


def drop_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    finally:
        admin.dispose()


def replicas(root: Path) -> list[Row]:
    url = scratch_postgres()
    if url is None:
        why = f"no PostgreSQL at {POSTGRES_URL.split('@')[-1]} (set FEDLM_TEST_POSTGRES_URL)"
        return [Row(n, a, why, "n/a", "", "SKIP") for n, a in (("2d", "replicas: an update to the replica that does not "
                                                                       "lead"), ("2e", "a single coordinator beside replicas"))]
    lab = Lab(root, ("alice", "bob"), database_url=url)
    run = {**TINY, "federation": {"rounds": 1, "clients_per_round": 2}}
    ports = {"alice": lab.port, "bob": free_port()}
    configs = [lab.write_config(f"replica-{n}.toml", run=run, server={"replica": True, "port": p}) for n, p in ports.items()]
    servers = [lab.serve(config, name=f"replica-{n}") for config, n in zip(configs, ports, strict=True)]
    try:
        for server, port in zip(servers, ports.values(), strict=True):
            lab.wait_healthy(server, port=port)
        single = lab.write_config("single.toml", run=run, server={"port": free_port(), "data_dir": "single"})
        rows = [refused_start(lab, "2e", "a single `fedlm serve` (own data_dir) on the replicas' PostgreSQL database",
                              single, "single-serve-2e")]
        rows.append(update_via_each_replica(lab, ports))
        return rows
    finally:
        lab.close()
        drop_postgres(url)


def update_via_each_replica(lab: Lab, ports: dict[str, int]) -> Row:
    """alice checks in and uploads at one replica, bob at the other; version 1 must hold both."""
    rnd = open_round(lab, tuple(ports), port_of=ports)
    start = lab.global_vector(rnd.version, "alice").astype(np.float64)
    before = lab.snapshot()
    answers = {n: upload(lab, n, rnd, dense(honest_update(n, rnd.number, rnd.size)), port=p) for n, p in ports.items()}
    wait_until(lambda: lab.status("alice")["version"] > rnd.version, 60, "the leader to close the round")
    after = lab.snapshot()
    delta = lab.global_vector(rnd.version + 1, "alice").astype(np.float64) - start
    expected = sum(honest_update(n, rnd.number, rnd.size).astype(np.float64) for n in ports) / len(ports)
    diff, accepted = float(np.abs(delta - expected).max()), version_metrics(lab, rnd.version + 1).get("accepted")
    ok = all(a.status_code == 200 for a in answers.values()) and accepted == 2 and diff < 1e-6
    return Row("2d", "two replicas on one PostgreSQL database: alice uploads to one, bob to the other",
               ", ".join(f"{n} via :{ports[n]}: {a.status_code}" for n, a in answers.items()),
               f"{describe(before, after)}; v{rnd.version + 1} holds {accepted} updates, = the mean of both "
               f"(max diff {diff:.1e})", "no accepted update lost: the version holds both", verdict(ok))
