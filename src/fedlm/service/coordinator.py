"""The coordinator: drives the pure round engine (server.rounds) from the database, restart-safe.

Every state change is written to the store before it is applied in memory, and the
in-memory round is only a cache of the store: an accepted update is a committed row
plus a content-addressed blob, so a coordinator killed at any point and started again
re-opens the same round and re-folds the same updates in the same order (the same
bytes, hence the same sum). All checks on an upload run before anything is written: a
refused upload leaves the round, the tables and the blobs as they were (only the audit
log notes the refusal). Under secure aggregation a round goes through the SecAgg
stages (`RoundRow.stage`: advertise, share, mask, confirm, unmask), each a relay of typed messages
to the protocol's server state machine (service.secure_stages); `collect` is the plain stage.
Recovery from the store (service.recovery), monitoring (service.round_monitor), the canary
gate (service.canary), privacy reporting (service.privacy_budget) and FedBuff
(service.buffered_rounds) are mixins of the coordinator in their own modules.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlm.config import RunConfig
from fedlm.monitoring.watch import observe
from fedlm.core.types import Task, Update
from fedlm.server.rounds import (
    OpenRound, UpdateRejected, accept_update, check_update, close_round, dominance_warning, clipped_share, mark_failed,
    open_round, signal_to_noise, weight_share,
)
from fedlm.service import store as db
from fedlm.service.blobs import BlobStore, Staged
from fedlm.service.buffered_rounds import BufferedRounds
from fedlm.service.errors import Refused
from fedlm.service.payloads import MalformedUpdate, read_masked, read_update
from fedlm.service.canary import CanaryGate
from fedlm.service.recovery import StoreRecovery
from fedlm.service.privacy_budget import PrivacyBudgetReports, budget_stop, privacy_fields
from fedlm.service.round_monitor import RoundMonitoring
from fedlm.privacy.release import releasable_for, reported_sum
from fedlm.service.registry import Evaluator
from fedlm.service.scheduling import Traits, ineligibility, invited_count, select_cohort
from fedlm.service.secagg_codec import parameters_answer
from fedlm.service.secure_stages import SecureStages, make_secagg_server
from fedlm.service.settings import RegistrySection, SchedulingSection, SecAggSection
from fedlm.updates.client import compression_of
from fedlm.updates.pipeline import Pipeline

log = logging.getLogger("fedlm.service")


@dataclass(frozen=True)
class TaskOffer:
    round: int
    version: int
    client_id: str
    clip_norm: float
    deadline: float
    global_sha256: str
    stage: str = "collect"
    secagg: dict[str, Any] | None = None  # the client's RoundParameters (cohort, neighbours, threshold, encoding)


@dataclass
class Available:
    last_seen: float
    traits: Traits


class Coordinator(StoreRecovery, SecureStages, BufferedRounds, RoundMonitoring, CanaryGate, PrivacyBudgetReports):
    def __init__(
        self, store: db.Store, blobs: BlobStore, *, run: RunConfig, pipeline: Pipeline, initial_global: np.ndarray,
        scheduling: SchedulingSection, registry: RegistrySection, evaluator: Evaluator | None = None,
        clock: Callable[[], float] = time.time, secagg: SecAggSection | None = None,
    ) -> None:
        self.store, self.blobs, self.run, self.pipeline = store, blobs, run, pipeline
        self.scheduling, self.registry, self.evaluator, self.clock = scheduling, registry, evaluator, clock
        self.secagg_deadlines = secagg or SecAggSection()
        self.lock = threading.RLock()
        self.available: dict[str, Available] = {}
        self.secure, self.secure_metrics = None, {}
        self._failed_on_replay: str | None = None
        # dp-accounting takes ~0.15 s per epsilon (fixed-size sampling): the budget verdict is kept per
        # (ledger length, rounds done), not recomputed on every poll
        self._budget_memo: tuple[tuple[int, int], str | None] = ((-1, -1), None)
        self._unsampled_memo: tuple[int, float | None] = (-1, None)
        self._init_monitoring(initial_global.size)
        self.state, self.rnd, self.round_row = self._recover(initial_global)
        if self._pending_step is not None:
            with self.lock:
                self._try_step(self._pending_step)
        if self._failed_on_replay is not None:  # a logged stage closing failed: the round ends as it would have
            with self.lock:
                self._abandon(f"on restart: {self._failed_on_replay}")

    # ---- clients ----------------------------------------------------------------------
    def register(self, client_id: str, traits: Traits) -> None:
        with self.lock, self.store.session() as session:
            row = session.get(db.ClientRow, client_id)
            if row is None:
                session.add(db.ClientRow(id=client_id, traits=traits.__dict__, registered_at=self.clock(), last_round=0))
                db.audit(session, "registered", client_id=client_id)
            else:
                row.traits = traits.__dict__
            self.available[client_id] = Available(self.clock(), traits)

    def poll(self, client_id: str, traits: Traits) -> TaskOffer | None:
        """Check in: the client's task in the open round, or None (nothing for it now)."""
        with self.lock:
            with self.store.session() as session:
                if session.get(db.ClientRow, client_id) is None:
                    raise Refused(404, "not_registered", f"client {client_id} must POST /v1/clients/register first")
            self.available[client_id] = Available(self.clock(), traits)
            self.tick()
            if self.buffer is not None:
                offer = self._buffered_offer(client_id)
                return None if offer is None else TaskOffer(offer[0], offer[1], client_id, self.state.clip_norm, offer[2],
                                                            self.global_sha(offer[1]))
            rnd = self.rnd
            if rnd is None or client_id not in rnd.cohort or client_id in rnd.weights or client_id in rnd.failed:
                return None
            secagg = None
            if self.secure is not None:  # offered until the client advertises; its own loop takes it from there
                if self.secure.stage != "advertise" or client_id in self.secure.adverts:
                    return None
                secagg = parameters_answer(self.secure.parameters(client_id))
            return TaskOffer(rnd.round, rnd.version, client_id, rnd.clip_norm, self.round_row.deadline,
                             self.global_sha(rnd.version), self.round_row.stage, secagg)

    @property
    def open_round_number(self) -> int | None:
        """The open round (under FedBuff: the buffer being filled), or None."""
        if self.buffer is not None:
            return None if self.buffer_row is None else self.buffer_row.round
        return None if self.rnd is None else self.rnd.round

    @property
    def finished(self) -> bool:
        return self.rnd is None and (self.state.rounds_done >= self.run.federation.rounds or self._budget_spent())

    def global_sha(self, version: int) -> str:
        with self.store.session() as session:
            row = session.get(db.VersionRow, version)
            if row is None:
                raise Refused(404, "unknown_version", f"no model version {version}")
            return row.global_sha256

    # ---- the round clock ---------------------------------------------------------------
    def tick(self) -> None:
        """Close a round past its deadline; open the next one when enough eligible clients are available."""
        with self.lock:
            now = self.clock()
            if self.buffer is not None:
                if self._pending_step is not None:
                    self._try_step(self._pending_step)
                self._expire_tasks(now)
                return
            if self.rnd is not None and self.secure is not None:
                self._tick_secagg(now)
            elif self.rnd is not None and now >= self.round_row.deadline:
                self._close("deadline")
            if self.rnd is None and not self.finished:
                self._maybe_open(now)

    def _eligible_available(self, now: float) -> list[str]:
        window = self.scheduling.availability_seconds
        return sorted(c for c, a in self.available.items()
                      if now - a.last_seen <= window and ineligibility(a.traits, self.scheduling) is None)

    def _maybe_open(self, now: float) -> None:
        target = self.run.federation.clients_per_round
        candidates = self._eligible_available(now)
        if len(candidates) < target:
            return
        round = self.state.rounds_done + 1
        with self.store.session() as session:
            size = min(len(candidates), invited_count(target, self.scheduling.over_selection))
            cohort = select_cohort(candidates, db.last_rounds(session), size=size, seed=self.run.run.seed, round=round)
            rnd = open_round(self.state, cohort, self.pipeline)
            secure = self.pipeline.mask is not None
            stage, seconds = ("advertise", self.secagg_deadlines.advertise_seconds) if secure else ("collect", self.scheduling.deadline_seconds)
            row = db.RoundRow(round=round, version=self.state.version, status="open", stage=stage, cohort=list(cohort),
                              target=target, opened_at=now, deadline=now + seconds)
            session.add(row)
            session.flush()
            session.add_all(db.TaskRow(round=round, client_id=c, status="assigned") for c in cohort)
            db.audit(session, "round_opened", round=round, detail=f"cohort {len(cohort)}, target {target}")
        self.rnd, self.round_row, self.watch = rnd, row, self._open_watch(len(cohort))
        self.secure, self.secure_metrics = (make_secagg_server(rnd, self.run.run.seed) if secure else None), {}
        log.info("round %d opened: %d invited, %d needed", round, len(cohort), target,
                 extra={"round": round, "version": self.state.version, "cohort": len(cohort), "target": target, "stage": stage})

    # ---- uploads -----------------------------------------------------------------------
    def precheck(self, client_id: str, round: int, version: int) -> None:
        """Refuse before the body is read when the task already rules the upload out (checked again on submit)."""
        with self.lock, self._refusals_audited(client_id, round):
            if self.pipeline.mask is not None:
                self._in_stage(client_id, round, "mask")
            elif self.buffer is not None:
                self._check_buffered_task(client_id, round, version)
            else:
                self._check_task(client_id, round, version)

    def submit(self, client_id: str, *, round: int, version: int, num_samples: int, metrics: dict[str, float],
               staged: Staged) -> dict[str, Any]:
        """Validate a staged upload and accept it, or raise Refused; the staged file is consumed either way.

        Under DP only the data-free metrics are kept (fedlm.privacy.release): nothing else a client sends is stored."""
        metrics = releasable_for(metrics, self.pipeline.privacy)
        num_samples = num_samples if self.pipeline.privacy is None else 1  # uniform under DP: a client's count is not kept
        with self._refusals_audited(client_id, round, staged):
            vector = self._read(staged, client_id, round)
            with self.lock:
                if self.pipeline.mask is not None:
                    return self._accept_masked(client_id, round, version, num_samples, metrics, staged, vector)
                if self.buffer is not None:
                    return self._submit_buffered(client_id, round, version, num_samples, metrics, staged, vector)
                self._check_task(client_id, round, version)
                update = Update(round, version, client_id, num_samples, vector, metrics)
                try:
                    check_update(self.rnd, update)
                except UpdateRejected as err:
                    raise Refused(422, "invalid_update", str(err)) from None
                self._accept(update, staged)
                return {"accepted": True, "round": round, "sha256": staged.sha256, "size": staged.size}

    def _read(self, staged: Staged, client_id: str, round: int) -> np.ndarray:
        size = self.state.global_vector.size
        try:
            if self.pipeline.mask is not None:
                return read_masked(staged.path, size=size)
            return self._read_plain(staged.path, client_id, round, size=size,
                                    clip_norm=self.rnd.clip_norm if self.rnd is not None else self.state.clip_norm)
        except MalformedUpdate as err:
            raise Refused(400, "malformed_update", str(err)) from None

    def _read_plain(self, path: Any, client_id: str, round: int, *, size: int, clip_norm: float) -> np.ndarray:
        """A plain update, decoded from the run's compression (the seed, round and client redraw a mask or rotation;
        the round's clip norm gives the shared quantization grid under DP)."""
        task = Task(round=round, version=0, client_id=client_id, clip_norm=clip_norm)  # the decoder reads no version
        return read_update(path, size=size, compression=compression_of(self.pipeline), seed=self.run.run.seed, task=task)

    def _check_task(self, client_id: str, round: int, version: int) -> None:
        rnd = self.rnd
        if rnd is None or round != rnd.round:
            where = "no round is open" if rnd is None else f"the open round is {rnd.round}"
            status = 409 if round <= self.state.rounds_done + 1 else 404
            raise Refused(status, "round_not_open", f"round {round} is not open ({where}); a late update is not accepted")
        if client_id not in rnd.cohort:
            raise Refused(403, "not_in_cohort", f"client {client_id} was not invited to round {round}")
        if client_id in rnd.weights or client_id in rnd.failed:
            raise Refused(409, "already_answered", f"client {client_id} already answered round {round}; a replay is refused")
        if version != rnd.version:
            raise Refused(409, "wrong_version", f"round {round} trains from version {rnd.version}, the update says {version}")

    def _accept(self, update: Update, staged: Staged) -> None:
        sha = self.blobs.commit(staged)
        with self.store.session() as session:
            db.record_accepted(session, update, sha256=sha, size=staged.size, at=self.clock(),
                               task=session.get(db.TaskRow, (update.round, update.client_id)))
        accept_update(self.rnd, update)  # only after the commit: a crash before it loses nothing accepted
        if self.watch is not None:
            observe(self.watch, update.client_id, update.vector)
        log.info("accepted update round=%d client=%s size=%d sha256=%s", update.round, update.client_id, staged.size, sha,
                 extra={"client_id": update.client_id, "round": update.round, "size": staged.size, "sha256": sha})
        if len(self.rnd.weights) >= self.round_row.target:
            self._close("target reached")

    @contextmanager
    def _refusals_audited(self, client_id: str, round: int, staged: Staged | None = None) -> Iterator[None]:
        """A refusal raised inside is audited and logged (ids, size, hash, code); the staged upload, if any, is
        discarded on any failure (the database or the disk too; a blob already published stays, unused)."""
        try:
            yield
        except Refused as refusal:
            if staged is not None:
                self.blobs.discard(staged)
            self._audit_refusal(client_id, round, staged, refusal)
            raise
        except BaseException:
            if staged is not None:
                self.blobs.discard(staged)
            raise

    def _audit_refusal(self, client_id: str, round: int, staged: Staged | None, refusal: Refused) -> None:
        size, sha = (None, None) if staged is None else (staged.size, staged.sha256)
        with self.store.session() as session:
            db.audit(session, "update_refused", client_id=client_id, round=round, size=size, sha256=sha,
                     detail=refusal.code)
        log_refusal(client_id, round, refusal, size=size, sha256=sha)

    # ---- closing ------------------------------------------------------------------------
    def _close(self, reason: str) -> None:
        rnd = self.rnd
        for client in rnd.cohort:
            if client not in rnd.weights and client not in rnd.failed:
                mark_failed(rnd, client)
        new_state, outcome = close_round(self.state, rnd)
        privacy = privacy_fields(self.pipeline.privacy, new_state.ledger)
        metrics = {**self._round_metrics(rnd, reason), **privacy, **signal_to_noise(rnd, outcome)}
        if outcome.committed:
            metrics.update(self._evaluate(new_state.global_vector))
        review = self._review(rnd, metrics)
        stop = budget_stop(self.pipeline.privacy, new_state.ledger, rnd.round + 1)
        with self.store.session() as session:
            if outcome.committed:
                new_state = self._commit_new_version(session, new_state, rnd.round, metrics)
            self._record_ledger(session, new_state, rnd.round, privacy.get("epsilon"))
            if stop is not None:
                db.audit(session, "budget_exhausted", round=rnd.round, detail=stop)
            closed = session.get(db.RoundRow, rnd.round)
            closed.status, closed.closed_at = "closed", self.clock()
            for client in outcome.failed:
                session.get(db.TaskRow, (rnd.round, client)).status = "failed"
            for client in outcome.accepted:
                session.get(db.ClientRow, client).last_round = rnd.round
            db.audit(session, "round_closed", round=rnd.round,
                     detail=f"{reason}; {len(outcome.accepted)} accepted, {len(outcome.failed)} failed, v{outcome.version}")
        self.state, self.rnd, self.round_row, self.secure, self.secure_metrics = new_state, None, None, None, {}
        self._budget_memo = ((len(new_state.ledger.entries), new_state.rounds_done), stop)
        self._raise_alerts(rnd.round, review)
        log.info("round %d closed (%s): version %d%s", rnd.round, reason, outcome.version,
                 "" if new_state.version == outcome.version else f"; training goes on from v{new_state.version}",
                 extra={"round": rnd.round, "version": outcome.version, "accepted": len(outcome.accepted),
                        "failed": len(outcome.failed), **privacy})
        if stop is not None:
            log.info(stop, extra={"round": rnd.round, **privacy})

    def _round_metrics(self, rnd: OpenRound, reason: str) -> dict[str, Any]:
        losses = [(m["train_loss"], rnd.weights[c]) for c, m in rnd.metrics.items() if "train_loss" in m]
        train_loss = float(np.average([l for l, _ in losses], weights=[w for _, w in losses])) if losses else None
        if (warning := dominance_warning(rnd)) is not None:
            log.warning(warning, extra={"round": rnd.round})
        return {"accepted": len(rnd.weights), "failed": len(rnd.failed), "cohort": len(rnd.cohort),
                "max_client_share": weight_share(rnd), "clipped_share": clipped_share(rnd), "train_loss": train_loss,
                "closed_by": reason,
                "redacted": reported_sum(rnd.metrics.values(), "redacted")}  # PII values replaced, per the clients


def log_refusal(client_id: str, round: int, refusal: Refused, *, size: int | None = None, sha256: str | None = None) -> None:
    """One log line per refused upload: ids, size, hash and the refusal code, never the detail (it may quote the body)."""
    fields = {"client_id": client_id, "round": round, "code": refusal.code, "status": refusal.status}
    fields.update({k: v for k, v in (("size", size), ("sha256", sha256)) if v is not None})
    log.info("refused update round=%s client=%s code=%s%s", round, client_id, refusal.code,
             "" if size is None else f" size={size}", extra=fields)
