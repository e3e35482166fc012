"""FedBuff in the service: a mixin of service.coordinator.Coordinator for `policy.kind = "fedbuff"`.

Buffered asynchronous aggregation (Nguyen et al. 2022, arXiv:2106.06639) driven from the
database by the same pure engine as the simulation (fedlm.server.buffered). There are no
cohorts: a client that checks in gets a task from the current global version while fewer
than `policy.concurrency` tasks are out; its update is folded when it arrives, weighted by
its staleness (the versions the server moved on since the task), and every
`policy.buffer_size` updates the server takes a step into the next version. A client that
answers late still counts while its staleness is within `policy.max_staleness`; past it the
upload is refused with `too_stale` and the task is over.

How it sits in the store (no table of its own): each buffer is a row of `rounds` (stage
"buffer", `version` = the global its tasks train from, `cohort` = the clients tasked while it
was open), a task is a row of `tasks` under the buffer it was handed out in, and an accepted
update is a row of `updates` under the buffer it was folded into (its `version` says where it
started). Restart safety is the synchronous coordinator's: the update row and its blob are
committed before the fold, a step (new version, buffer closed, next buffer opened) is one
transaction, and a coordinator started again re-folds the open buffer's updates in arrival
order, so the same bytes give the same sum; a buffer found full is stepped at once. Tasks
still out are handed the same offer again (a restarted client picks its task up) with a
fresh deadline, unless they are already past `policy.max_staleness`; a task past
`scheduling.deadline_seconds` is failed and its slot freed. A client has at most one update
in a buffer. If storing a step fails (its evaluation, the database), memory goes back to what
the store holds and the step is retried each tick; meanwhile no task is handed out and
uploads get 503 `step_pending`.

Per-round monitoring (sketches, drift alerts) reviews a synchronous cohort and is not run
under FedBuff; the canary gate and the registry's evaluation run on every step as on every
round. DP and SecAgg are refused with FedBuff when the run config is loaded
(fedlm.server.policy_settings says why).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from fedlm.core.types import Update
from fedlm.server.buffered import Aggregation, StaleUpdate, accept_stale, buffer_policy, check_stale, new_buffer
from fedlm.server.rounds import ServerState, UpdateRejected
from fedlm.service import store as db
from fedlm.service.blobs import Staged
from fedlm.service.errors import Refused
from fedlm.service.scheduling import ineligibility

log = logging.getLogger("fedlm.service")


@dataclass(frozen=True)
class OutTask:
    """A task handed out and not yet answered: the buffer it was handed out in, its version, when it expires."""

    round: int
    version: int
    deadline: float


class BufferedRounds:
    """Needs the coordinator's store, blobs, run, pipeline, scheduling, clock, lock, state, available, _evaluate,
    _commit_new_version, _stored_updates and _stored_state."""

    buffer = None  # a fedlm.server.buffered.BufferedState under policy.kind = "fedbuff", else None
    _pending_step = None  # a full buffer's step not stored yet (retried each tick); nothing is handed out meanwhile

    # ---- start-up --------------------------------------------------------------------
    def _recover_buffered(self, session: Any, state: ServerState) -> Aggregation | None:
        """The buffer over the last committed version, its open row's updates re-folded; a full buffer's step."""
        self.buffer = new_buffer(state, self.pipeline, buffer_policy(self.run.policy))
        self.outstanding: dict[str, OutTask] = {}
        self.buffer_row = db.open_round_row(session)
        if self.buffer_row is None:
            if state.rounds_done < self.run.federation.rounds:
                self.buffer_row = self._open_buffer(session, state)
            return None
        if self.buffer_row.stage != "buffer":
            raise RuntimeError(f"the store's open round {self.buffer_row.round} is a synchronous round (stage "
                               f"{self.buffer_row.stage!r}); policy.kind = 'fedbuff' cannot take it over: finish the "
                               "run with the policy it started with, or start a new data_dir and database")
        stepped = None
        for update in self._stored_updates(session, self.buffer_row.round, size=state.global_vector.size,
                                           clip_norm=state.clip_norm):
            if stepped is not None:
                raise RuntimeError(f"the store's buffer {self.buffer_row.round} holds more than policy.buffer_size = "
                                   f"{self.buffer.policy.buffer_size} updates; it cannot be replayed as it was folded")
            stepped = accept_stale(self.buffer, update)
        now = self.clock()
        versions = {r.round: r.version for r in session.scalars(select(db.RoundRow))}
        for task in session.scalars(select(db.TaskRow).where(db.TaskRow.status == "assigned")):
            if state.version - versions[task.round] > self.run.policy.max_staleness:  # it could no longer count
                task.status = "failed"
                db.audit(session, "task_ended", client_id=task.client_id, round=task.round, detail="too_stale")
                continue
            self.outstanding[task.client_id] = OutTask(task.round, versions[task.round],
                                                       now + self.scheduling.deadline_seconds)
        detail = f"FedBuff buffer {self.buffer_row.round}: {self.buffer.buffered} updates re-folded, " \
                 f"{len(self.outstanding)} tasks out"
        db.audit(session, "recovered", round=self.buffer_row.round, detail=detail)
        log.info("recovered %s", detail, extra={"round": self.buffer_row.round})
        return stepped

    def _open_buffer(self, session: Any, state: ServerState) -> db.RoundRow:
        round = state.rounds_done + 1
        now = self.clock()
        row = db.RoundRow(round=round, version=state.version, status="open", stage="buffer", cohort=[],
                          target=self.buffer.policy.buffer_size, opened_at=now, deadline=float("inf"))
        session.add(row)
        session.flush()
        db.audit(session, "buffer_opened", round=round, detail=f"version {state.version}")
        return row

    # ---- clients ---------------------------------------------------------------------
    def _buffered_offer(self, client_id: str) -> tuple[int, int, float] | None:
        """(round, version, deadline) of the client's task: the one it holds, or a new one when a slot is free."""
        held = self.outstanding.get(client_id)
        if held is not None:
            return held.round, held.version, held.deadline
        if self.buffer_row is None or self.finished:
            return None
        if self._pending_step is not None or any(c == client_id for c, _ in self.buffer.sources):
            return None  # a step is being stored; or the client's update is in this buffer: one per buffer
        if len(self.outstanding) >= self.run.policy.concurrency:
            return None
        if ineligibility(self.available[client_id].traits, self.scheduling) is not None:
            return None
        task = OutTask(self.buffer_row.round, self.buffer.version, self.clock() + self.scheduling.deadline_seconds)
        with self.store.session() as session:
            row = session.get(db.RoundRow, task.round)
            row.cohort = [*row.cohort, client_id]  # a new list: the JSON column is not mutation-tracked
            task_row = session.get(db.TaskRow, (task.round, client_id))
            if task_row is None:
                session.add(db.TaskRow(round=task.round, client_id=client_id, status="assigned"))
            else:  # its earlier task of this buffer expired: this is a fresh one
                task_row.status = "assigned"
        self.buffer_row.cohort = [*self.buffer_row.cohort, client_id]
        self.outstanding[client_id] = task
        return task.round, task.version, task.deadline

    def _expire_tasks(self, now: float) -> None:
        """Fail the tasks past their deadline: their slots go to other clients; a later upload is refused."""
        expired = [c for c, t in self.outstanding.items() if now >= t.deadline]
        if not expired:
            return
        with self.store.session() as session:
            for client in expired:
                task = self.outstanding.pop(client)
                session.get(db.TaskRow, (task.round, client)).status = "failed"
                db.audit(session, "task_expired", client_id=client, round=task.round)
        log.info("%d FedBuff tasks expired", len(expired), extra={"expired": len(expired)})

    # ---- uploads ---------------------------------------------------------------------
    def _check_buffered_task(self, client_id: str, round: int, version: int) -> OutTask:
        """The client's outstanding task this upload answers, or Refused saying why it answers none."""
        if self._pending_step is not None:
            raise Refused(503, "step_pending", "the server is storing its last step into a new version; retry shortly")
        task = self.outstanding.get(client_id)
        if task is not None and task.round == round:
            if version != task.version:
                raise Refused(409, "wrong_version", f"the task of round {round} trains from version {task.version}, "
                              f"the update says {version}")
            if self.buffer.version - task.version > self.run.policy.max_staleness:  # refused before the body is read
                self._end_task(client_id, task, "failed", "too_stale")
                raise Refused(409, "too_stale", f"the task of round {round} started from version {task.version}, "
                              f"{self.buffer.version - task.version} versions behind the server's {self.buffer.version}: "
                              f"past policy.max_staleness = {self.run.policy.max_staleness}")
            return task
        with self.store.session() as session:
            row = session.get(db.TaskRow, (round, client_id))
        if row is None:
            opened = self.buffer_row.round if self.buffer_row is not None else self.state.rounds_done
            if round > opened:
                raise Refused(404, "round_not_open", f"round {round} has not opened (the open buffer is {opened})")
            raise Refused(403, "not_in_cohort", f"client {client_id} was handed no task in round {round}")
        if row.status == "accepted":
            raise Refused(409, "already_answered", f"client {client_id} already answered its task of round {round}")
        if self.finished:
            raise Refused(409, "round_not_open", f"the run is finished: the task of round {round} can no longer count")
        raise Refused(409, "task_expired", f"the task of client {client_id} in round {round} expired, or its update "
                      "was too stale; ask for a new task")

    def _submit_buffered(self, client_id: str, round: int, version: int, num_samples: int, metrics: dict[str, float],
                         staged: Staged, vector: np.ndarray) -> dict[str, Any]:
        """Fold an upload into the open buffer (a step when it fills), or Refused: nothing changed but the task."""
        task = self._check_buffered_task(client_id, round, version)
        update = Update(self.buffer_row.round, version, client_id, num_samples, vector, metrics)
        try:
            staleness = check_stale(self.buffer, update)
        except StaleUpdate as err:
            self._end_task(client_id, task, "failed", "too_stale")
            raise Refused(409, "too_stale", str(err)) from None
        except UpdateRejected as err:
            raise Refused(422, "invalid_update", str(err)) from None
        sha = self.blobs.commit(staged)
        with self.store.session() as session:
            db.record_accepted(session, update, sha256=sha, size=staged.size, at=self.clock(),
                               task=session.get(db.TaskRow, (task.round, client_id)), detail=f"staleness {staleness}")
        del self.outstanding[client_id]
        stepped = accept_stale(self.buffer, update)  # only after the commit: a crash before it loses nothing accepted
        log.info("accepted update round=%d client=%s size=%d sha256=%s staleness=%d", update.round, client_id,
                 staged.size, sha, staleness, extra={"client_id": client_id, "round": update.round, "size": staged.size,
                                                     "sha256": sha, "staleness": staleness})
        receipt = {"accepted": True, "round": update.round, "sha256": sha, "size": staged.size, "staleness": staleness}
        if stepped is not None:
            self._try_step(stepped)  # the update is stored either way: the client hears it was accepted
        return receipt

    def _end_task(self, client_id: str, task: OutTask, status: str, why: str) -> None:
        with self.store.session() as session:
            session.get(db.TaskRow, (task.round, client_id)).status = status
            db.audit(session, "task_ended", client_id=client_id, round=task.round, detail=why)
        self.outstanding.pop(client_id, None)

    # ---- steps -----------------------------------------------------------------------
    def _try_step(self, aggregation: Aggregation) -> None:
        """Store a step; if that fails (an evaluation or the database), put memory back to what the store holds,
        keep the full buffer's step pending (no task is handed out, no upload taken: 503) and retry it each tick."""
        try:
            self._step(aggregation)
        except Exception:
            log.exception("storing the step into version %d failed; it is retried on the next tick", aggregation.version)
            with self.store.session() as session:
                self.state = self._stored_state(session)
                self._pending_step = self._recover_buffered(session, self.state)

    def _step(self, aggregation: Aggregation) -> None:
        """The buffer's step is stored as one version: evaluated, through the canary gate; the next buffer opens.
        Memory follows only once the store has committed."""
        row, new_state = self.buffer_row, self.buffer.server
        metrics = {**step_metrics(aggregation), **self._evaluate(new_state.global_vector)}
        with self.store.session() as session:
            going_on = self._commit_new_version(session, new_state, row.round, metrics)
            closed = session.get(db.RoundRow, row.round)
            closed.status, closed.closed_at = "closed", self.clock()
            for client in set(aggregation.clients):
                session.get(db.ClientRow, client).last_round = row.round
            db.audit(session, "round_closed", round=row.round,
                     detail=f"buffer of {len(aggregation.clients)}, staleness {list(aggregation.staleness)}, "
                            f"v{aggregation.version}")
            finished = going_on.rounds_done >= self.run.federation.rounds
            next_row = None if finished else self._open_buffer(session, going_on)
            if finished:  # the tasks still out can no longer count
                for client, task in self.outstanding.items():
                    session.get(db.TaskRow, (task.round, client)).status = "failed"
        self.buffer.server = going_on  # a rollback goes on from production's copy; the buffer is empty
        self.state, self.buffer_row, self._pending_step = going_on, next_row, None
        if finished:
            self.outstanding.clear()
        log.info("round %d closed (buffer full): version %d from %d updates, staleness %s", row.round,
                 aggregation.version, len(aggregation.clients), list(aggregation.staleness),
                 extra={"round": row.round, "version": aggregation.version, "accepted": len(aggregation.clients)})


def step_metrics(aggregation: Aggregation) -> dict[str, Any]:
    """A step's numbers for its version's metrics: how many updates, their staleness, the train loss they report."""
    losses = [(m["train_loss"], w) for m, w in zip(aggregation.metrics, aggregation.weights) if "train_loss" in m]
    train_loss = float(np.average([l for l, _ in losses], weights=[w for _, w in losses])) if losses else None
    staleness = np.array(aggregation.staleness, dtype=np.float64)
    return {"accepted": len(aggregation.clients), "failed": 0, "cohort": len(aggregation.clients),
            "staleness_mean": float(staleness.mean()), "staleness_max": int(staleness.max()),
            "train_loss": train_loss, "closed_by": "buffer full", "released_norm": aggregation.released_norm}
