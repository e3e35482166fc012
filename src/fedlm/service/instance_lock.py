"""One coordinator per data directory and per database: a second `fedlm serve` is refused, not let in.

Two coordinators over one data directory or one database each keep their own round in
memory, so an update one of them accepts is left out of the version the other writes, and
the second one's start-up would clear the first one's staged uploads. Until replicas share a
round through the database, the first process holds an exclusive lock for its lifetime:
`flock` on a file in the data directory (and beside a SQLite file kept elsewhere), and a
PostgreSQL session-level advisory lock on the database. The operating system or the
database releases each when the process ends, however it ends, so a crash leaves no stale lock.

Replicas (server.replica = true: several `fedlm serve` over one PostgreSQL database and one
shared data directory, service.replica) take the same locks shared instead: replicas admit
each other, and a single coordinator (exclusive) and replicas (shared) refuse each other.
Among replicas the one that opens and closes rounds holds a second advisory lock, the
leader's, for its lifetime (`try_lead`): when it dies the database drops its session and
another replica takes the lock on its next tick. No election protocol of our own.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCK_FILE = "coordinator.lock"
ADVISORY_KEY = 0x666564_6C6D  # "fedlm": the one advisory lock a coordinator takes in its database
LEADER_KEY = ADVISORY_KEY + 1  # replicas: held by the one that opens and closes rounds


class AlreadyServing(ValueError):
    """Another coordinator holds this data directory or database."""


@dataclass
class InstanceLock:
    """The locks one coordinator holds; `release` gives them back (the process's end does too)."""

    files: list[Any] = field(default_factory=list)
    connections: list[Any] = field(default_factory=list)

    def release(self) -> None:
        for handle in self.files:
            handle.close()
        for connection in self.connections:  # closing alone would return the session, lock and all, to the pool
            connection.invalidate()
        self.files, self.connections = [], []


def lock_file(path: Path, what: str, *, shared: bool = False) -> Any:
    """An open file holding an exclusive (or, for replicas, shared) flock on `path`, with this process's pid in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyServing(f"another fedlm serve (pid {holder}) already serves {what}: two coordinators on one data "
                             "directory or database lose accepted updates. Stop it first, or give this one its own "
                             "server.data_dir and server.database_url (replicas: server.replica = true in every "
                             "one's server.toml)") from None
    if not shared:  # replicas share the file: none of them owns its contents
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return handle


def advisory_lock(engine: Any, key: int, *, shared: bool = False) -> Any:
    """A detached connection holding the session-level advisory lock `key`, or None if another session holds it."""
    from sqlalchemy import text

    connection = engine.connect()
    connection.detach()  # this session is the lock's: it never goes back to the pool for others to reuse
    function = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    held = connection.execute(text(f"SELECT {function}(:key)"), {"key": key}).scalar()
    connection.commit()
    if not held:
        connection.invalidate()
        return None
    return connection


def lock_database(engine: Any, url: str, *, shared: bool = False) -> Any:
    """A connection holding PostgreSQL's advisory lock for coordinators (None for other databases)."""
    if engine.dialect.name != "postgresql":
        return None
    connection = advisory_lock(engine, ADVISORY_KEY, shared=shared)
    if connection is None:
        other = "a single coordinator" if shared else "another fedlm serve"
        raise AlreadyServing(f"{other} already serves the database {url.split('@')[-1]}: two coordinators on one "
                             "database lose accepted updates. Stop it first, or give this one its own database "
                             "(replicas: server.replica = true in every one's server.toml)")
    return connection


def try_lead(engine: Any, connection: Any = None) -> tuple[Any, bool]:
    """Replicas: ask for the leader's advisory lock on `connection` (a new detached one if None, kept by the caller
    for the next ask); (that connection, whether it holds the lock now)."""
    from sqlalchemy import text

    if connection is None:
        connection = engine.connect()
        connection.detach()
    held = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_KEY}).scalar())
    connection.commit()
    return connection, held


def hold_instance(data_dir: Path, engine: Any, url: str, *, replica: bool = False) -> InstanceLock:
    """Take every lock a coordinator needs (shared ones for a replica), or refuse with the holder's pid; nothing is
    changed on refusal."""
    lock = InstanceLock()
    try:
        lock.files.append(lock_file(Path(data_dir) / LOCK_FILE, f"the data directory {data_dir}", shared=replica))
        if engine.dialect.name == "sqlite" and engine.url.database and engine.url.database != ":memory:":
            # always beside the file, wherever it is: another coordinator with its own data_dir that names this
            # database (even one inside this data_dir) must meet this lock
            database = Path(engine.url.database).resolve()
            lock.files.append(lock_file(database.with_name(database.name + "." + LOCK_FILE), f"the database {database}",
                                        shared=replica))
        connection = lock_database(engine, url, shared=replica)
        if connection is not None:
            lock.connections.append(connection)
    except BaseException:
        lock.release()
        raise
    return lock
