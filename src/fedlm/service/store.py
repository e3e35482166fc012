"""The coordinator's state in a database (SQLAlchemy 2): SQLite by default, PostgreSQL by URL.

Tables: clients, rounds, tasks, accepted updates (metadata only: the payloads are blobs,
content-addressed on disk), the SecAgg message log of open rounds, model versions, the privacy ledger, pointers (the production
version) and an audit log. The audit log and every other table hold ids, sizes, hashes
and numbers, never update contents or client text. Everything the round engine needs to
resume lives here, so a restarted coordinator rebuilds its open round from these rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, UniqueConstraint, create_engine, event, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class ClientRow(Base):
    __tablename__ = "clients"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    traits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    registered_at: Mapped[float] = mapped_column(Float)
    last_round: Mapped[int] = mapped_column(Integer, default=0)  # the last round it contributed to; 0 = never


class RoundRow(Base):
    __tablename__ = "rounds"
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)  # the global version the round trains from
    status: Mapped[str] = mapped_column(String(16))  # open | closing (replicas: no upload is taken any more) | closed
    # collect (plain) | advertise, share, mask, confirm, unmask (SecAgg) | abandoned (SecAgg could not recover the sum)
    stage: Mapped[str] = mapped_column(String(32), default="collect")
    cohort: Mapped[list[str]] = mapped_column(JSON)
    target: Mapped[int] = mapped_column(Integer)  # updates that close the round before its deadline
    opened_at: Mapped[float] = mapped_column(Float)
    deadline: Mapped[float] = mapped_column(Float)  # under SecAgg: the current stage's deadline
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class PresenceRow(Base):
    """Replicas: when a client last checked in (at any replica) and what it said, so the replica leading the
    rounds sees every available client (a single coordinator keeps this in memory)."""

    __tablename__ = "presence"
    client_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_seen: Mapped[float] = mapped_column(Float)
    traits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TaskRow(Base):
    __tablename__ = "tasks"
    round: Mapped[int] = mapped_column(ForeignKey("rounds.round"), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # assigned | accepted | failed


class UpdateRow(Base):
    __tablename__ = "updates"
    __table_args__ = (UniqueConstraint("round", "client_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round: Mapped[int] = mapped_column(ForeignKey("rounds.round"))
    client_id: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    num_samples: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    received_at: Mapped[float] = mapped_column(Float)


class SecAggMessageRow(Base):
    """One SecAgg message the coordinator accepted, or one stage it closed, in the order it happened.

    A restarted coordinator replays these into a fresh SecAgg server to rebuild the open
    round. `body` holds public keys, sealed boxes, commitments and shares as base64 (the
    server may see all of them); a masked input is a blob named by `body["sha256"]`. A
    stage closing has kind "close" and the stage's name in `client_id`.
    """

    __tablename__ = "secagg_messages"
    __table_args__ = (UniqueConstraint("round", "kind", "client_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round: Mapped[int] = mapped_column(ForeignKey("rounds.round"))
    kind: Mapped[str] = mapped_column(String(16))  # advert | shares | masked | confirm | unmask | close
    client_id: Mapped[str] = mapped_column(String(128))
    body: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    received_at: Mapped[float] = mapped_column(Float)


class VersionRow(Base):
    __tablename__ = "model_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    round: Mapped[int] = mapped_column(Integer)  # the round that produced it (0: the initial adapter)
    state_sha256: Mapped[str] = mapped_column(String(64))  # safetensors: global, optimizer moments, ledger
    global_sha256: Mapped[str] = mapped_column(String(64))  # the dense wire payload clients download
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16))  # promoted | held (failed the canary gate)
    created_at: Mapped[float] = mapped_column(Float)


class LedgerRow(Base):
    __tablename__ = "privacy_ledger"
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    event: Mapped[str] = mapped_column(String)  # the round's DP event as the ledger's JSON
    epsilon: Mapped[float] = mapped_column(Float)  # epsilon of every round so far, at the plan's delta


class PointerRow(Base):
    __tablename__ = "pointers"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)  # "production"
    version: Mapped[int] = mapped_column(Integer)


class AuditRow(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    event: Mapped[str] = mapped_column(String(32))
    client_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(String(512), default="")


class Store:
    """One database: `session()` opens a transaction that commits on success, rolls back on error."""

    def __init__(self, url: str) -> None:
        sqlite = url.startswith("sqlite")
        self.engine = create_engine(url, connect_args={"check_same_thread": False} if sqlite else {})
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA synchronous=FULL")  # a committed accept survives power loss
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def audit(session: Session, event_name: str, *, client_id: str | None = None, round: int | None = None,
          size: int | None = None, sha256: str | None = None, detail: str = "") -> None:
    session.add(AuditRow(at=time.time(), event=event_name, client_id=client_id, round=round, size=size,
                         sha256=sha256, detail=detail[:512]))


def record_accepted(session: Session, update: Any, *, sha256: str, size: int, task: TaskRow, at: float,
                    detail: str = "") -> None:
    """An accepted plain update (a core.types.Update) as the store keeps it: its row (numbers only, never the vector),
    its task answered, and the audit entry. The caller commits the blob first and the session after."""
    session.add(UpdateRow(round=update.round, client_id=update.client_id, version=update.version, sha256=sha256,
                          size=size, num_samples=update.num_samples,
                          metrics={k: float(v) for k, v in update.metrics.items()}, received_at=at))
    task.status = "accepted"
    audit(session, "update_accepted", client_id=update.client_id, round=update.round, size=size, sha256=sha256,
          detail=detail)


def latest_version(session: Session) -> VersionRow | None:
    return session.scalars(select(VersionRow).order_by(VersionRow.version.desc()).limit(1)).first()


def open_round_row(session: Session) -> RoundRow | None:
    return session.scalars(select(RoundRow).where(RoundRow.status == "open")).first()


def last_closed_round(session: Session) -> int:
    return session.scalar(select(func.max(RoundRow.round)).where(RoundRow.status == "closed")) or 0


def accepted_updates(session: Session, round: int) -> list[UpdateRow]:
    return list(session.scalars(select(UpdateRow).where(UpdateRow.round == round).order_by(UpdateRow.id)))


def secagg_messages(session: Session, round: int) -> list[SecAggMessageRow]:
    return list(session.scalars(select(SecAggMessageRow).where(SecAggMessageRow.round == round).order_by(SecAggMessageRow.id)))


def task_of_update(session: Session, update: UpdateRow) -> TaskRow | None:
    """The accepted task an update answered: under its own round, or under FedBuff (where an update is filed under the
    buffer it was folded into) the client's accepted task handed out from the update's version."""
    return session.scalars(
        select(TaskRow).join(RoundRow, TaskRow.round == RoundRow.round)
        .where(TaskRow.client_id == update.client_id, TaskRow.status == "accepted", RoundRow.version == update.version)
        .order_by((TaskRow.round == update.round).desc(), TaskRow.round.desc()).limit(1)).first()


def tasks_of(session: Session, round: int) -> dict[str, str]:
    return {t.client_id: t.status for t in session.scalars(select(TaskRow).where(TaskRow.round == round))}


def latest_ledger_row(session: Session) -> LedgerRow | None:
    """The privacy ledger's row of the last closed DP round (its epsilon covers every round so far)."""
    return session.scalars(select(LedgerRow).order_by(LedgerRow.round.desc()).limit(1)).first()


def production_version(session: Session) -> int | None:
    row = session.get(PointerRow, "production")
    return None if row is None else row.version


def set_production(session: Session, version: int) -> None:
    row = session.get(PointerRow, "production")
    if row is None:
        session.add(PointerRow(name="production", version=version))
    else:
        row.version = version


def versions(session: Session) -> list[VersionRow]:
    return list(session.scalars(select(VersionRow).order_by(VersionRow.version)))


def last_rounds(session: Session) -> dict[str, int]:
    return {c.id: c.last_round for c in session.scalars(select(ClientRow))}
