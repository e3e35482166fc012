"""Replicas: several `fedlm serve` processes over one PostgreSQL database serve one federation (server.replica = true).

A single coordinator (service.coordinator) keeps the open round in memory as a cache of the
store. Replicas cannot: an update one of them accepts must reach the version another writes.
So a replica keeps no round in memory, and the database decides:

- A check-in is noted in the `presence` table (at most every few seconds per client and
  replica), so the replica that opens rounds sees every available client, whichever replica
  it checks in at. A task is read from the open round's row and the client's task row.
- An upload is checked in full, then accepted in one transaction that holds the round's row
  FOR SHARE and the task's row FOR UPDATE: only while the round is open and the task
  assigned; the row and the blob are committed before the client hears 200.
- The replica holding the leader lock (instance_lock.try_lead, a PostgreSQL advisory lock:
  the database drops it with the session of a replica that dies, and another takes it on its
  next tick) opens rounds and closes them. Closing takes the round's row FOR UPDATE (so it
  waits for uploads being accepted anywhere), marks it "closing" and commits: from then on
  no replica accepts an upload for it, and its accepted updates are final. The leader then
  re-folds them from their blobs in commit order (the single coordinator's restart path:
  the same bytes, the same sum) and closes the round as a single coordinator does (the new
  version through the canary gate, the privacy ledger, the audit log). A leader that dies
  mid-close leaves the round "closing"; the next one finishes it. Nothing accepted is lost.

Blobs live in the data directory every replica shares (the same file system, so that
publishing a blob stays one atomic rename); each replica stages uploads in its own folder.
Not yet with replicas, refused at start: secure aggregation and FedBuff (their state is held
in one process), SQLite (one writer, no advisory locks).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert

from fedlm.core.types import Update
from fedlm.privacy.release import releasable_for
from fedlm.server.rounds import ServerState, UpdateRejected, check_contents, open_round
from fedlm.service import store as db
from fedlm.service.blobs import Staged
from fedlm.service.coordinator import Coordinator, TaskOffer
from fedlm.service.errors import Refused
from fedlm.service.instance_lock import ADVISORY_KEY, try_lead
from fedlm.service.payloads import MalformedUpdate, decode_state
from fedlm.service.scheduling import Traits, ineligibility

log = logging.getLogger("fedlm.service")

INIT_KEY = ADVISORY_KEY + 2  # a transaction lock: one replica writes version 0 of an empty database
STATE_SECONDS = 0.2  # the latest version is re-read at most this often (it changes once a round)


class ReplicaCoordinator(Coordinator):
    """A Coordinator whose round lives in the database; see the module docstring."""

    state: ServerState | None = None

    def _recover(self, initial_global: np.ndarray) -> tuple[ServerState, None, None]:
        self.leader: Any = None  # the connection holding the leader lock, while this replica leads
        self._asking: Any = None  # the session this replica asks for the leader lock on, kept between ticks
        self._noted: dict[str, float] = {}  # when this replica last wrote each client's presence
        self._read_at = -float("inf")
        self._registered: set[str] = set()  # clients seen registered (a registration is never taken back)
        self._global_shas: dict[int, str] = {}  # a version's global never changes
        self._open: db.RoundRow | None = None  # the open or closing round's row, as read at _open_read_at
        self._open_read_at = -float("inf")
        with self.store.session() as session:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": INIT_KEY})
            if db.latest_version(session) is None:
                self._initialise(session, initial_global)
        return self._latest_state(force=True), None, None

    # ---- what every replica reads ------------------------------------------------------
    def _latest_state(self, *, force: bool = False) -> ServerState:
        """The newest version's state (rounds done as the store counts them), re-read at most every STATE_SECONDS."""
        if not force and time.monotonic() - self._read_at < STATE_SECONDS:
            return self.state
        with self.store.session() as session:
            self.state = self._stored_state(session, cached=self.state)
        self._read_at = time.monotonic()
        return self.state

    def _round_row(self, session: Any, *, statuses: tuple[str, ...] = ("open",)) -> db.RoundRow | None:
        return session.scalars(select(db.RoundRow).where(db.RoundRow.status.in_(statuses))
                               .order_by(db.RoundRow.round.desc()).limit(1)).first()

    def _open_row(self, *, force: bool = False) -> db.RoundRow | None:
        """The open or closing round's row (detached), re-read at most every STATE_SECONDS (the tick forces a read):
        a thousand clients polling would otherwise each read it. A task offered from a row a moment old, as its round
        starts closing, is refused on upload (round_not_open) as a late update is."""
        if force or time.monotonic() - self._open_read_at >= STATE_SECONDS:
            with self.store.session() as session:
                self._open = self._round_row(session, statuses=("open", "closing"))
            self._open_read_at = time.monotonic()
        return self._open

    @property
    def open_round_number(self) -> int | None:
        row = self._open_row()
        return None if row is None else row.round

    def global_sha(self, version: int) -> str:
        if version not in self._global_shas:
            self._global_shas[version] = super().global_sha(version)
        return self._global_shas[version]

    @property
    def finished(self) -> bool:
        state = self._latest_state()
        return self.open_round_number is None and (state.rounds_done >= self.run.federation.rounds or
                                                   self._budget_spent())

    def _clip_norm_of(self, version: int) -> float:
        state = self._latest_state()
        if state.version == version:
            return state.clip_norm
        with self.store.session() as session:
            row = session.get(db.VersionRow, version)
        return decode_state(self.blobs.read(row.state_sha256)).clip_norm if row is not None else state.clip_norm

    # ---- clients -----------------------------------------------------------------------
    def register(self, client_id: str, traits: Traits) -> None:
        """The client's row, written once whichever replicas it registers at, even at the same time (an upsert)."""
        now = self.clock()
        new = insert(db.ClientRow).values(id=client_id, traits=dict(traits.__dict__), registered_at=now, last_round=0)
        with self.store.session() as session:
            created = session.execute(new.on_conflict_do_nothing(index_elements=[db.ClientRow.id])).rowcount
            if created:
                db.audit(session, "registered", client_id=client_id)
            else:
                session.get(db.ClientRow, client_id).traits = dict(traits.__dict__)
        self._note_presence(client_id, traits, force=True)

    def _note_presence(self, client_id: str, traits: Traits, *, force: bool = False) -> None:
        """Write the check-in to `presence` (an upsert), at most every availability_seconds / 4 per client."""
        now = self.clock()
        if not force and now - self._noted.get(client_id, -float("inf")) < self.scheduling.availability_seconds / 4:
            return
        values = {"client_id": client_id, "last_seen": now, "traits": dict(traits.__dict__)}
        statement = insert(db.PresenceRow).values(**values)
        upsert = statement.on_conflict_do_update(  # a check-in written late never moves last_seen back
            index_elements=[db.PresenceRow.client_id],
            set_={"last_seen": func.greatest(db.PresenceRow.last_seen, statement.excluded.last_seen),
                  "traits": statement.excluded.traits})
        with self.store.session() as session:
            session.execute(upsert)
        self._noted[client_id] = now

    def poll(self, client_id: str, traits: Traits) -> TaskOffer | None:
        """Check in: the client's task in the open round, or None. The leader's clock runs in the tick loop only."""
        if client_id not in self._registered:
            with self.store.session() as session:
                if session.get(db.ClientRow, client_id) is None:
                    raise Refused(404, "not_registered", f"client {client_id} must POST /v1/clients/register first")
            self._registered.add(client_id)
        self._note_presence(client_id, traits)
        row = self._open_row()
        if row is None or row.status != "open":
            return None
        with self.store.session() as session:
            task = session.get(db.TaskRow, (row.round, client_id))
        if task is None or task.status != "assigned":
            return None
        return TaskOffer(row.round, row.version, client_id, self._clip_norm_of(row.version), row.deadline,
                         self.global_sha(row.version), row.stage)

    def _eligible_available(self, now: float) -> list[str]:
        since = now - self.scheduling.availability_seconds
        with self.store.session() as session:
            seen = list(session.scalars(select(db.PresenceRow).where(db.PresenceRow.last_seen >= since)))
        return sorted(p.client_id for p in seen if ineligibility(Traits(**p.traits), self.scheduling) is None)

    # ---- uploads -----------------------------------------------------------------------
    def _check_task_rows(self, row: db.RoundRow | None, task: db.TaskRow | None, client_id: str, round: int,
                         version: int) -> None:
        """The single coordinator's task checks (the same codes), read from the rows."""
        if row is None or row.status != "open":
            latest = self._latest_state().rounds_done
            where = "it is closed or closing" if row is not None else "it has not opened"
            status = 409 if round <= latest + 1 else 404
            raise Refused(status, "round_not_open", f"round {round} is not open ({where}); a late update is not accepted")
        if task is None:
            raise Refused(403, "not_in_cohort", f"client {client_id} was not invited to round {round}")
        if task.status != "assigned":
            raise Refused(409, "already_answered", f"client {client_id} already answered round {round}; a replay is refused")
        if version != row.version:
            raise Refused(409, "wrong_version", f"round {round} trains from version {row.version}, the update says {version}")

    def precheck(self, client_id: str, round: int, version: int) -> None:
        with self._refusals_audited(client_id, round), self.store.session() as session:
            self._check_task_rows(session.get(db.RoundRow, round), session.get(db.TaskRow, (round, client_id)),
                                  client_id, round, version)

    def submit(self, client_id: str, *, round: int, version: int, num_samples: int, metrics: dict[str, float],
               staged: Staged) -> dict[str, Any]:
        """Check a staged upload, then accept it in one transaction under the round's and the task's row locks."""
        metrics = releasable_for(metrics, self.pipeline.privacy)
        num_samples = num_samples if self.pipeline.privacy is None else 1
        with self._refusals_audited(client_id, round, staged):
            clip_norm = self._clip_norm_of(version)
            size = self._latest_state().global_vector.size
            try:
                vector = self._read_plain(staged.path, client_id, round, size=size, clip_norm=clip_norm)
            except MalformedUpdate as err:
                raise Refused(400, "malformed_update", str(err)) from None
            update = Update(round, version, client_id, num_samples, vector, metrics)
            with self.store.session() as session:
                row = session.scalars(select(db.RoundRow).where(db.RoundRow.round == round)
                                      .with_for_update(read=True)).first()
                task = session.scalars(select(db.TaskRow).where(db.TaskRow.round == round,
                                                                db.TaskRow.client_id == client_id).with_for_update()).first()
                self._check_task_rows(row, task, client_id, round, version)
                try:
                    check_contents(update, self.pipeline, (size,), clip_norm)
                except UpdateRejected as err:
                    raise Refused(422, "invalid_update", str(err)) from None
                sha = self.blobs.commit(staged)  # before the rows: a crash between leaves an unused blob, never a row
                db.record_accepted(session, update, sha256=sha, size=staged.size, task=task, at=self.clock())
        log.info("accepted update round=%d client=%s size=%d sha256=%s", round, client_id, staged.size, sha,
                 extra={"client_id": client_id, "round": round, "size": staged.size, "sha256": sha})
        return {"accepted": True, "round": round, "sha256": sha, "size": staged.size}

    # ---- the leader's clock ------------------------------------------------------------
    def _leads(self) -> bool:
        """Whether this replica holds the leader lock (taking it when it is free); a lost session gives it up."""
        if self.leader is not None:
            try:
                self.leader.execute(text("SELECT 1"))
                self.leader.commit()
            except Exception:  # the database dropped this session: the lock went with it
                log.warning("this replica lost its database session and with it the lead of the rounds")
                self.leader.invalidate()
                self.leader = None
        if self.leader is None:
            try:
                self._asking, held = try_lead(self.store.engine, self._asking)
            except Exception:  # the asking session is gone (the database restarted): the next tick asks on a new one
                if self._asking is not None:
                    self._asking.invalidate()
                self._asking = None
                raise
            self.leader = self._asking if held else None
            if held:
                self._asking = None  # that session is the leader's now; the next ask (if it is lost) opens another
                with self.store.session() as session:
                    db.audit(session, "replica_leads", detail="this replica opens and closes rounds now")
                log.info("this replica leads the rounds now (it holds the leader lock)")
        return self.leader is not None

    def tick(self) -> None:
        """Every replica: the latest version. The leader: close a round that is due, then open the next one."""
        with self.lock:
            self._latest_state(force=True)
            self._open_row(force=True)
            if not self._leads():
                return
            now = self.clock()
            with self.store.session() as session:
                row = self._round_row(session, statuses=("open", "closing"))
                accepted = 0 if row is None else session.scalar(
                    select(func.count()).select_from(db.TaskRow).where(db.TaskRow.round == row.round,
                                                                       db.TaskRow.status == "accepted"))
            if row is not None and row.status == "closing":
                self._finish_close(row.round, "closed by the previous leader")
            elif row is not None and (accepted >= row.target or now >= row.deadline):
                if self._begin_close(row.round):
                    self._finish_close(row.round, "target reached" if accepted >= row.target else "deadline")
            if self._open_row(force=True) is None and not self.finished:
                self._maybe_open(now)
                self.rnd = self.round_row = self.watch = None  # uploads go to the database, not to this replica
                self._open_read_at = -float("inf")  # the round just opened is read on the next poll

    def _begin_close(self, round: int) -> bool:
        """Take the round's row once every upload being accepted has committed, and mark it closing: final. False
        (nothing changed) if it is not open any more: another replica led meanwhile."""
        with self.store.session() as session:
            row = session.scalars(select(db.RoundRow).where(db.RoundRow.round == round).with_for_update()).one()
            if row.status != "open":
                log.warning("round %d is %s, not open: another replica closed it", round, row.status)
                return False
            row.status = "closing"
            return True

    def _finish_close(self, round: int, reason: str) -> None:
        """Re-fold the closing round's accepted updates from their blobs and close it as a single coordinator does;
        nothing if the round is not the closing one that follows the latest version (another replica led)."""
        state = self._latest_state(force=True)
        with self.store.session() as session:
            row = session.get(db.RoundRow, round)
            if row.status != "closing" or round != state.rounds_done + 1:
                log.warning("round %d is %s after %d rounds done: not closing it here", round, row.status,
                            state.rounds_done)
                return
            rnd = open_round(state, tuple(row.cohort), self.pipeline)
            self._refold(session, rnd)
        self.state, self.rnd, self.round_row = state, rnd, row
        self._close(reason)
        self.rnd = self.round_row = None
        self._read_at = self._open_read_at = -float("inf")
