"""How the coordinator's state lives in the store: version 0, recovery at start, re-folding a round from its blobs.

A mixin of service.coordinator.Coordinator. The store is the truth and memory a cache of it:
a version is its state and global blobs (content-addressed) plus a row; an open round is its
row, its tasks and its accepted updates' rows and blobs. A coordinator started again (or a
replica's leader closing a round, service.replica) rebuilds the round by re-folding the
accepted updates in commit order: the same bytes, hence the same sum. An update whose blob
was damaged is left out and reported, never folded as if it were whole.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from fedlm.core.types import Update
from fedlm.monitoring.history import history_from_records
from fedlm.monitoring.watch import observe
from fedlm.server.rounds import OpenRound, ServerState, accept_update, initial_state, mark_failed, open_round
from fedlm.service import store as db
from fedlm.service.blobs import CorruptBlob
from fedlm.service.payloads import MalformedUpdate, decode_state, encode_state
from fedlm.updates import wire

log = logging.getLogger("fedlm.service")


class StoreRecovery:
    """Needs the coordinator's store, blobs, run, pipeline, clock and _evaluate, _open_watch, _read_plain,
    _recover_buffered and _replay_secagg."""

    def _recover(self, initial_global: np.ndarray) -> tuple[ServerState, OpenRound | None, db.RoundRow | None]:
        """The last committed version, and the open round re-folded from its accepted updates."""
        with self.store.session() as session:
            latest = db.latest_version(session)
            if latest is None:
                state = self._initialise(session, initial_global)
                if self.run.policy.kind == "fedbuff":
                    self._recover_buffered(session, state)  # an empty buffer over version 0
                return state, None, None
            state = self._stored_state(session)
            self.monitor_history = history_from_records(v.metrics for v in db.versions(session) if v.round > 0)
            if self.run.policy.kind == "fedbuff":
                self._pending_step = self._recover_buffered(session, state)
                return state, None, None
            row = db.open_round_row(session)
            if row is None:
                return state, None, None
            if row.stage == "buffer":
                raise RuntimeError(f"the store's open round {row.round} is a FedBuff buffer; policy.kind = "
                                   f"{self.run.policy.kind!r} cannot take it over: finish the run with the policy it "
                                   "started with, or start a new data_dir and database")
            rnd = open_round(state, tuple(row.cohort), self.pipeline)
            if rnd.round != row.round:
                raise RuntimeError(f"the store's open round {row.round} does not follow round {state.rounds_done}")
            if self.pipeline.mask is not None:
                self._failed_on_replay = self._replay_secagg(session, rnd, row.stage, state.ledger)
                detail = f"SecAgg log replayed to stage {row.stage}, {len(self.secure.masked)} masked inputs"
            else:
                self._refold(session, rnd)
                detail = f"{len(rnd.weights)} accepted updates re-folded"
            db.audit(session, "recovered", round=row.round, detail=detail)
            log.info("recovered round %d: %s", row.round, detail, extra={"round": row.round})
            return state, rnd, row

    def _stored_state(self, session: Any, cached: ServerState | None = None) -> ServerState:
        """The newest version's state (decoded from its blob unless `cached` is that version), with rounds done as
        the store counts them (a round abandoned or closed without a new version still counts)."""
        latest = db.latest_version(session)
        state = cached if cached is not None and cached.version == latest.version else \
            decode_state(self.blobs.read(latest.state_sha256))
        return replace(state, rounds_done=max(state.rounds_done, db.last_closed_round(session)))

    def _initialise(self, session: Any, initial_global: np.ndarray) -> ServerState:
        """Version 0 from the initial adapter, promoted to production (an empty store's first start)."""
        state = initial_state(initial_global, self.pipeline)
        self._commit_version(session, state, round=0, metrics=self._evaluate(state.global_vector), status="promoted")
        db.set_production(session, 0)
        db.audit(session, "initialised", size=int(initial_global.size))
        return state

    def _refold(self, session: Any, rnd: OpenRound) -> None:
        """Fold the round's accepted updates from their blobs, in commit order (the same bytes: the same sum), and
        fail its failed tasks; a damaged blob is left out and reported."""
        self.watch = self._open_watch(len(rnd.cohort))
        for update in self._stored_updates(session, rnd.round, size=rnd.total.size, clip_norm=rnd.clip_norm):
            accept_update(rnd, update)
            if self.watch is not None:
                observe(self.watch, update.client_id, update.vector)
        for client, status in db.tasks_of(session, rnd.round).items():
            if status == "failed":
                mark_failed(rnd, client)

    def _stored_updates(self, session: Any, round: int, *, size: int, clip_norm: float) -> Iterator[Update]:
        """The round's accepted updates as they were accepted, in commit order, read from their blobs; one whose blob
        is damaged is left out (its task failed, audited and logged: _lose_update)."""
        for row in db.accepted_updates(session, round):
            try:
                vector = self._read_plain(self.blobs.verified_path(row.sha256), row.client_id, row.round, size=size,
                                          clip_norm=clip_norm)
            except (CorruptBlob, MalformedUpdate) as err:
                self._lose_update(session, row, err)
                continue
            yield Update(row.round, row.version, row.client_id, row.num_samples, vector, row.metrics)

    def _lose_update(self, session: Any, update: db.UpdateRow, err: Exception) -> None:
        """An accepted update whose blob was damaged on disk: the round goes on without it, and says so."""
        task = db.task_of_update(session, update)
        if task is not None:
            task.status = "failed"
        db.audit(session, "update_blob_corrupt", client_id=update.client_id, round=update.round, sha256=update.sha256,
                 detail=str(err))
        log.error("round %d: the accepted update of client %s is left out: %s", update.round, update.client_id, err,
                  extra={"round": update.round, "client_id": update.client_id, "sha256": update.sha256})

    def _commit_version(self, session: Any, state: ServerState, *, round: int, metrics: dict, status: str) -> db.VersionRow:
        state_sha = self.blobs.put(encode_state(state))
        global_sha = self.blobs.put(wire.serialize_dense(state.global_vector))
        row = db.VersionRow(version=state.version, round=round, state_sha256=state_sha, global_sha256=global_sha,
                            metrics=metrics, status=status, created_at=self.clock())
        session.add(row)
        return row
