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
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedlm.config import RunConfig
from fedlm.core.types import Task, Update
from fedlm.monitoring.alerts import describe_alert
from fedlm.monitoring.history import MonitorHistory, history_from_records
from fedlm.monitoring.review import RoundReview, per_client_unavailable, review_round
from fedlm.monitoring.sketch import make_sketcher
from fedlm.monitoring.watch import RoundWatch, observe, open_watch
from fedlm.privacy.accountant import epsilon_without_sampling
from fedlm.server.rounds import (
    OpenRound, ServerState, UpdateRejected, accept_update, check_update, close_round, dominance_warning, initial_state,
    clipped_share, mark_failed, open_round, weight_share,
)
from fedlm.service import store as db
from fedlm.service.blobs import BlobStore, Staged
from fedlm.service.errors import Refused
from fedlm.service.blobs import CorruptBlob
from fedlm.service.payloads import MalformedUpdate, decode_state, encode_state, read_masked, read_update
from fedlm.service.privacy_budget import SAMPLING_ASSUMPTION, budget_stop, privacy_fields
from fedlm.privacy.release import releasable_for, reported_sum
from fedlm.service.registry import Evaluator, as_evaluation, regressed_slices, should_promote
from fedlm.service.scheduling import Traits, ineligibility, invited_count, select_cohort
from fedlm.service.secagg_codec import parameters_answer
from fedlm.service.secure_stages import SecureStages, make_secagg_server
from fedlm.service.settings import RegistrySection, SchedulingSection, SecAggSection
from fedlm.updates import wire
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


class Coordinator(SecureStages):
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
        if self._failed_on_replay is not None:  # a logged stage closing failed: the round ends as it would have
            with self.lock:
                self._abandon(f"on restart: {self._failed_on_replay}")

    # ---- start-up -------------------------------------------------------------------
    def _init_monitoring(self, size: int) -> None:
        """Per-round update statistics and alerts ([monitoring]); per-client figures only where the server may see them."""
        noise = max(self.run.privacy.noise_multiplier, self.pipeline.privacy.noise_multiplier if self.pipeline.privacy else 0.0)
        self.monitor_unavailable = per_client_unavailable(secure=self.pipeline.mask is not None, noise_multiplier=noise)
        wanted = self.run.monitoring.enabled and self.monitor_unavailable is None
        self.sketcher = make_sketcher(size, self.run.run.seed) if wanted else None
        self.watch: RoundWatch | None = None
        self.alert_counts: dict[str, int] = {}  # alerts raised by kind since this process started (a Prometheus counter)
        self.last_monitor: dict[str, Any] = {}  # the last closed round's "monitor" object
        self.monitor_history = MonitorHistory()  # rebuilt from the versions' metrics on restart (_recover)

    def _open_watch(self, cohort_size: int) -> RoundWatch | None:
        return open_watch(self.sketcher, cohort_size) if self.sketcher is not None else None

    def _recover(self, initial_global: np.ndarray) -> tuple[ServerState, OpenRound | None, db.RoundRow | None]:
        """The last committed version, and the open round re-folded from its accepted updates."""
        with self.store.session() as session:
            latest = db.latest_version(session)
            if latest is None:
                state = initial_state(initial_global, self.pipeline)
                self._commit_version(session, state, round=0, metrics=self._evaluate(state.global_vector), status="promoted")
                db.set_production(session, 0)
                db.audit(session, "initialised", size=int(initial_global.size))
                return state, None, None
            state = decode_state(self.blobs.read(latest.state_sha256))
            state = replace(state, rounds_done=max(state.rounds_done, db.last_closed_round(session)))
            self.monitor_history = history_from_records(v.metrics for v in db.versions(session) if v.round > 0)
            row = db.open_round_row(session)
            if row is None:
                return state, None, None
            rnd = open_round(state, tuple(row.cohort), self.pipeline)
            if rnd.round != row.round:
                raise RuntimeError(f"the store's open round {row.round} does not follow round {state.rounds_done}")
            if self.pipeline.mask is not None:
                self._failed_on_replay = self._replay_secagg(session, rnd, row.stage, state.ledger)
                detail = f"SecAgg log replayed to stage {row.stage}, {len(self.secure.masked)} masked inputs"
            else:
                self.watch = self._open_watch(len(rnd.cohort))
                for update in db.accepted_updates(session, row.round):
                    try:
                        vector = self._read_plain(self.blobs.verified_path(update.sha256), update.client_id, update.round,
                                                  size=state.global_vector.size)
                    except (CorruptBlob, MalformedUpdate) as err:
                        self._lose_update(session, update, err)
                        continue
                    accept_update(rnd, Update(update.round, update.version, update.client_id, update.num_samples, vector, update.metrics))
                    if self.watch is not None:
                        observe(self.watch, update.client_id, vector)
                for client, status in db.tasks_of(session, row.round).items():
                    if status == "failed":
                        mark_failed(rnd, client)
                detail = f"{len(rnd.weights)} accepted updates re-folded"
            db.audit(session, "recovered", round=row.round, detail=detail)
            log.info("recovered round %d: %s", row.round, detail, extra={"round": row.round})
            return state, rnd, row

    def _lose_update(self, session: Any, update: db.UpdateRow, err: Exception) -> None:
        """An accepted update whose blob was damaged on disk: the round goes on without it, and says so."""
        session.get(db.TaskRow, (update.round, update.client_id)).status = "failed"
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
    def finished(self) -> bool:
        return self.rnd is None and (self.state.rounds_done >= self.run.federation.rounds or self._budget_spent())

    def _budget_spent(self) -> bool:
        return self.budget_stop_reason() is not None

    def budget_stop_reason(self) -> str | None:
        """Why no further round opens under privacy.target_epsilon (None while the budget allows one)."""
        key = (len(self.state.ledger.entries), self.state.rounds_done)
        if self._budget_memo[0] != key:
            self._budget_memo = (key, budget_stop(self.pipeline.privacy, self.state.ledger, self.state.rounds_done + 1))
        return self._budget_memo[1]

    def privacy_report(self) -> dict[str, Any] | None:
        """epsilon after the last closed round (as the ledger table holds it), delta and the budget; None without DP."""
        plan = self.pipeline.privacy
        if plan is None:
            return None
        with self.store.session() as session:
            row = db.latest_ledger_row(session)
            epsilon, rounds = (0.0, 0) if row is None else (row.epsilon, row.round)
        without = self._epsilon_without_sampling(plan)
        return {"epsilon": epsilon if epsilon >= 0 else None, "epsilon_without_sampling": without,
                "sampling_assumption": SAMPLING_ASSUMPTION, "delta": plan.delta, "accounted_through_round": rounds,
                "noise_multiplier": plan.noise_multiplier, "placement": plan.placement,
                "target_epsilon": plan.target_epsilon or None, "stop_reason": self.budget_stop_reason()}

    def _epsilon_without_sampling(self, plan: Any) -> float | None:
        """The bound that assumes nothing about cohort selection, kept per ledger length (accounting costs ~0.1 s)."""
        key = len(self.state.ledger.entries)
        if self._unsampled_memo[0] != key:
            events = [entry.event for entry in self.state.ledger.entries]
            value = epsilon_without_sampling(events, delta=plan.delta, accountant=plan.accountant)
            self._unsampled_memo = (key, value if math.isfinite(value) else None)
        return self._unsampled_memo[1]

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
        with self.lock:
            try:
                if self.pipeline.mask is not None:
                    self._in_stage(client_id, round, "mask")
                else:
                    self._check_task(client_id, round, version)
            except Refused as refusal:
                with self.store.session() as session:
                    db.audit(session, "update_refused", client_id=client_id, round=round, detail=refusal.code)
                log_refusal(client_id, round, refusal)
                raise

    def submit(self, client_id: str, *, round: int, version: int, num_samples: int, metrics: dict[str, float],
               staged: Staged) -> dict[str, Any]:
        """Validate a staged upload and accept it, or raise Refused; the staged file is consumed either way.

        Under DP only the data-free metrics are kept (fedlm.privacy.release): nothing else a client sends is stored."""
        metrics = releasable_for(metrics, self.pipeline.privacy)
        try:
            vector = self._read(staged, client_id, round)
            with self.lock:
                if self.pipeline.mask is not None:
                    return self._accept_masked(client_id, round, version, num_samples, metrics, staged, vector)
                self._check_task(client_id, round, version)
                update = Update(round, version, client_id, num_samples, vector, metrics)
                try:
                    check_update(self.rnd, update)
                except UpdateRejected as err:
                    raise Refused(422, "invalid_update", str(err)) from None
                self._accept(update, staged)
                return {"accepted": True, "round": round, "sha256": staged.sha256, "size": staged.size}
        except Refused as refusal:
            self.blobs.discard(staged)
            self._audit_refusal(client_id, round, staged, refusal)
            raise

    def _read(self, staged: Staged, client_id: str, round: int) -> np.ndarray:
        size = self.state.global_vector.size
        try:
            if self.pipeline.mask is not None:
                return read_masked(staged.path, size=size)
            return self._read_plain(staged.path, client_id, round, size=size)
        except MalformedUpdate as err:
            raise Refused(400, "malformed_update", str(err)) from None

    def _read_plain(self, path: Any, client_id: str, round: int, *, size: int) -> np.ndarray:
        """A plain update, decoded from the run's compression (the seed, round and client redraw a mask or rotation)."""
        task = Task(round=round, version=0, client_id=client_id)  # the decoder reads only round and client id
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
            session.add(db.UpdateRow(round=update.round, client_id=update.client_id, version=update.version, sha256=sha,
                                     size=staged.size, num_samples=update.num_samples,
                                     metrics={k: float(v) for k, v in update.metrics.items()}, received_at=self.clock()))
            session.get(db.TaskRow, (update.round, update.client_id)).status = "accepted"
            db.audit(session, "update_accepted", client_id=update.client_id, round=update.round, size=staged.size, sha256=sha)
        accept_update(self.rnd, update)  # only after the commit: a crash before it loses nothing accepted
        if self.watch is not None:
            observe(self.watch, update.client_id, update.vector)
        log.info("accepted update round=%d client=%s size=%d sha256=%s", update.round, update.client_id, staged.size, sha,
                 extra={"client_id": update.client_id, "round": update.round, "size": staged.size, "sha256": sha})
        if len(self.rnd.weights) >= self.round_row.target:
            self._close("target reached")

    def _audit_refusal(self, client_id: str, round: int, staged: Staged, refusal: Refused) -> None:
        with self.store.session() as session:
            db.audit(session, "update_refused", client_id=client_id, round=round, size=staged.size, sha256=staged.sha256,
                     detail=refusal.code)
        log_refusal(client_id, round, refusal, size=staged.size, sha256=staged.sha256)

    # ---- closing ------------------------------------------------------------------------
    def _close(self, reason: str) -> None:
        rnd, row = self.rnd, self.round_row
        for client in rnd.cohort:
            if client not in rnd.weights and client not in rnd.failed:
                mark_failed(rnd, client)
        new_state, outcome = close_round(self.state, rnd)
        privacy = privacy_fields(self.pipeline.privacy, new_state.ledger)
        metrics = {**self._round_metrics(rnd, reason), **privacy}
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

    def _evaluate(self, vector: np.ndarray) -> dict[str, Any]:
        """The canary gate's figures of a version: eval_loss, and eval_slices per sub-folder of registry.eval_data
        (nothing without an evaluator). Version 0 is scored too, so the gate always has production's figures."""
        if self.evaluator is None:
            return {}
        evaluation = as_evaluation(self.evaluator(vector))
        return {"eval_loss": evaluation.loss, **({"eval_slices": evaluation.slices} if evaluation.slices else {})}

    def _round_metrics(self, rnd: OpenRound, reason: str) -> dict[str, Any]:
        losses = [(m["train_loss"], rnd.weights[c]) for c, m in rnd.metrics.items() if "train_loss" in m]
        train_loss = float(np.average([l for l, _ in losses], weights=[w for _, w in losses])) if losses else None
        if (warning := dominance_warning(rnd)) is not None:
            log.warning(warning, extra={"round": rnd.round})
        return {"accepted": len(rnd.weights), "failed": len(rnd.failed), "cohort": len(rnd.cohort),
                "max_client_share": weight_share(rnd), "clipped_share": clipped_share(rnd), "train_loss": train_loss,
                "closed_by": reason,
                "redacted": reported_sum(rnd.metrics.values(), "redacted")}  # PII values replaced, per the clients

    def _review(self, rnd: OpenRound, metrics: dict[str, Any]) -> RoundReview | None:
        """The round's monitoring verdict, its "monitor" object and "alerts" list put into `metrics` (monitoring on)."""
        if not self.run.monitoring.enabled:
            return None
        review = review_round({**metrics, "round": rnd.round}, watch=self.watch, history=self.monitor_history,
                              settings=self.run.monitoring, expected=min(len(rnd.cohort), self.round_row.target),
                              unavailable=self.monitor_unavailable)
        metrics["monitor"], metrics["alerts"] = review.monitor, review.alerts
        return review

    def _raise_alerts(self, round: int, review: RoundReview | None) -> None:
        """Once the round is stored: each alert as one warning line and a count, and the history moves on."""
        self.watch = None
        if review is None:
            return
        self.monitor_history, self.last_monitor = review.history, review.monitor
        for alert in review.alerts:
            self.alert_counts[alert["kind"]] = self.alert_counts.get(alert["kind"], 0) + 1
            fields = {"round": round, "alert": alert["kind"], **({"client_id": alert["client"]} if "client" in alert else {})}
            log.warning(describe_alert(alert), extra=fields)

    def monitoring_snapshot(self) -> tuple[dict[str, int], dict[str, Any]]:
        """Alerts raised by kind since start-up and the last closed round's "monitor" object (for /metrics)."""
        with self.lock:
            return dict(self.alert_counts), dict(self.last_monitor)

    def _commit_new_version(self, session: Any, state: ServerState, round: int, metrics: dict[str, Any]) -> ServerState:
        """Commit the round's version through the canary gate; returns the state training goes on from (the new version,
        or with registry.on_regression = "rollback" and a regression, a copy of the production version)."""
        production = db.production_version(session)
        production_row = session.get(db.VersionRow, production) if production is not None else None
        before = dict(production_row.metrics) if production_row is not None else {}
        margin = self.registry.canary_margin
        worse = not should_promote(metrics.get("eval_loss"), before.get("eval_loss"), margin)
        slices = regressed_slices(metrics.get("eval_slices") or {}, before.get("eval_slices") or {}, margin)
        promote = not worse and not slices
        self._commit_version(session, state, round=round, metrics=metrics, status="promoted" if promote else "held")
        if promote:
            db.set_production(session, state.version)
            return state
        what = ", ".join(([f"overall {metrics['eval_loss']:.4f} vs {before['eval_loss']:.4f}"] if worse else [])
                         + [f"slice {name} {metrics['eval_slices'][name]:.4f} vs {before['eval_slices'][name]:.4f}"
                            for name in slices])
        db.audit(session, "canary_held", round=round, detail=f"v{state.version} worse than production v{production} "
                 f"by more than the margin {margin:g}: {what}")
        log.warning("round %d: version %d not promoted (worse than production v%d: %s)", round, state.version, production,
                    what, extra={"round": round, "version": state.version})
        if self.registry.on_regression != "rollback":
            return state
        return self._restore(session, state, production_row, round)

    def _restore(self, session: Any, held: ServerState, production: db.VersionRow, round: int) -> ServerState:
        """registry.on_regression = "rollback": the next version is production's model and optimizer state again, so
        the next round trains from it. Spent privacy stays spent (the ledger, rounds done and clip norm go on)."""
        saved = decode_state(self.blobs.read(production.state_sha256))
        restored = replace(saved, version=held.version + 1, rounds_done=held.rounds_done, clip_norm=held.clip_norm,
                           ledger=held.ledger)
        figures = {k: production.metrics[k] for k in ("eval_loss", "eval_slices") if k in production.metrics}
        self._commit_version(session, restored, round=round, status="restored",  # the same model: production's figures
                             metrics={"restored_from": production.version, "rolled_back": held.version, **figures})
        db.audit(session, "canary_rollback", round=round, detail=f"v{held.version} rolled back: training goes on from "
                 f"v{restored.version}, a copy of production v{production.version}")
        log.warning("round %d: rolled back to production v%d (as v%d)", round, production.version, restored.version,
                    extra={"round": round, "version": restored.version})
        return restored

    def _record_ledger(self, session: Any, state: ServerState, round: int, epsilon: float | None) -> None:
        """The round's DP event and epsilon so far (-1 when unbounded) in the privacy_ledger table."""
        if self.pipeline.privacy is None or state.ledger.last_round != round:
            return
        from fedlm.privacy.ledger import PrivacyLedger

        entry = PrivacyLedger(state.ledger.entries[-1:]).to_json()
        session.add(db.LedgerRow(round=round, event=entry, epsilon=-1.0 if epsilon is None else epsilon))


def log_refusal(client_id: str, round: int, refusal: Refused, *, size: int | None = None, sha256: str | None = None) -> None:
    """One log line per refused upload: ids, size, hash and the refusal code, never the detail (it may quote the body)."""
    fields = {"client_id": client_id, "round": round, "code": refusal.code, "status": refusal.status}
    fields.update({k: v for k, v in (("size", size), ("sha256", sha256)) if v is not None})
    log.info("refused update round=%s client=%s code=%s%s", round, client_id, refusal.code,
             "" if size is None else f" size={size}", extra=fields)
