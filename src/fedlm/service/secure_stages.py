"""The SecAgg+ stages of an open round as the coordinator serves them (Bell et al. 2020; Bonawitz et al. 2017).

The coordinator relays typed messages to the protocol's server state machine
(secagg.server) and never sees a single update: only masked inputs and, at the end, the
cohort's sum. Restart safety is by replay: every message the state machine accepts is
checked first (`check_*`, which changes nothing), then written to the store (a row of the
SecAgg message log; a masked input also as a content-addressed blob and an update row),
and only then applied; every stage closing is logged the same way. A restarted
coordinator rebuilds the state machine of the open round by replaying the log in order
(the masking graph comes from the run seed and the round, as in the simulation). A stage
closes once every client still in it has answered, or at its deadline (`[secagg]` in
server.toml); a RoundFailed at a closing or at the end abandons the round: nothing is
released and the version stays. Client secrets stay in the client processes.

Stages: advertise -> share -> mask -> confirm -> unmask. The confirm stage is Bonawitz et
al. 2017's consistency check: the survivors sign the survivor and dropped sets, and each
one's unmask request carries its neighbours' signatures; the clients verify every advert
and every signature themselves (secagg.client says why that protects them from a lying
coordinator). The coordinator also verifies each advert's and each confirmation's
signature on receipt (`owner`: the app's ClientVerifier), so that one client's bad
signature is refused with 422 instead of making its neighbours abort the round; replay
does not re-verify (the messages were verified when logged, and a CRL may have changed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cryptography import x509

from fedlm.privacy.ledger import PrivacyLedger
from fedlm.secagg.identity import certificate_verifier, common_name
from fedlm.secagg.messages import MaskedInput, RoundFailed, SecAggError
from fedlm.secagg.server import SecAggServer, check_signed
from fedlm.server.rounds import OpenRound, UpdateRejected, abandon_round, accept_sum
from fedlm.service import secagg_codec as codec
from fedlm.service import store as db
from fedlm.service.errors import Refused
from fedlm.service.payloads import read_masked
from fedlm.service.privacy_budget import survivors_guard
from fedlm.secagg.inputs import PER_UPDATE_METRICS, round_server

log = logging.getLogger("fedlm.service")
ORDER = ("advertise", "share", "mask", "confirm", "unmask")
FOLLOWING = dict(zip(ORDER, ORDER[1:]))
KIND_STAGE = {"advert": "advertise", "shares": "share", "confirm": "confirm", "unmask": "unmask"}
PARSERS = {"advert": codec.advert_from, "shares": codec.shares_from, "confirm": codec.confirm_from,
           "unmask": codec.unmask_from}
CertificateOwner = Callable[[x509.Certificate], str | None]


def make_secagg_server(rnd: OpenRound, seed: int) -> SecAggServer:
    """The protocol server of a round, as the simulation makes it (secagg.inputs.round_server)."""
    return round_server(rnd.pipeline, rnd.round, rnd.cohort, size=rnd.total.size, clip_norm=rnd.clip_norm, seed=seed)


def stage_seconds(deadlines: Any, stage: str) -> float:
    """A stage's deadline from `[secagg]`."""
    return float(deadlines.seconds(stage))


def stage_members(server: SecAggServer) -> set[str]:
    """The clients still in the current stage: those that answered every earlier one."""
    return {"advertise": set(server.cohort), "share": set(server.adverts), "mask": set(server.sealed),
            "confirm": set(server.survivors), "unmask": set(server.confirmations)}.get(server.stage, set())


def answered(server: SecAggServer) -> set[str]:
    return {"advertise": set(server.adverts), "share": set(server.sealed), "mask": set(server.masked),
            "confirm": set(server.confirmations), "unmask": set(server.replies)}.get(server.stage, set())


def close_stage(server: SecAggServer, stage: str, guard: Callable[[int], str | None] | None = None) -> None:
    """Close `stage`; RoundFailed when too few answered, or when `guard` refuses the survivors of the
    mask stage (before anyone is asked for a share that would unmask their sum)."""
    {"advertise": server.close_advertising, "share": server.close_sharing, "mask": server.close_masking,
     "confirm": server.close_confirming}[stage]()
    refusal = guard(len(server.survivors)) if guard is not None and stage == "mask" else None
    if refusal is not None:
        server.stage = "failed"
        raise RoundFailed(refusal)


def apply_logged(server: SecAggServer, row: db.SecAggMessageRow, masked: Callable[[str], Any],
                 guard: Callable[[int], str | None] | None = None) -> None:
    """Apply one row of the message log to `server`, as when it was accepted (RoundFailed on a failing close)."""
    if row.kind == "close":
        close_stage(server, row.client_id, guard)
    elif row.kind == "masked":
        server.receive_masked(MaskedInput(row.client_id, row.round, masked(row.body["sha256"])))
    else:
        message = PARSERS[row.kind](row.client_id, row.round, row.body)
        receiver(server, row.kind)(message)


def receiver(server: SecAggServer, kind: str) -> Callable[[Any], None]:
    return {"advert": server.receive_advert, "shares": server.receive_shares, "confirm": server.receive_confirmation,
            "unmask": server.receive_unmask}[kind]


def checker(server: SecAggServer, kind: str) -> Callable[[Any], None]:
    return {"advert": server.check_advert, "shares": server.check_shares, "confirm": server.check_confirmation,
            "unmask": server.check_unmask}[kind]


class SecureStages:
    """Coordinator methods for the SecAgg stages (mixed into service.coordinator.Coordinator)."""

    secure: SecAggServer | None
    secure_metrics: dict[str, dict[str, float]]

    # ---- rebuilding -----------------------------------------------------------------------
    def _replay_secagg(self, session: Any, rnd: OpenRound, stage: str, ledger: PrivacyLedger) -> str | None:
        """Rebuild the open round's protocol server from the log; the reason to abandon it, if a close failed."""
        self.secure = make_secagg_server(rnd, self.run.run.seed)
        size = rnd.total.size
        self.secure_metrics = {u.client_id: dict(u.metrics) for u in db.accepted_updates(session, rnd.round)}
        try:
            for row in db.secagg_messages(session, rnd.round):
                apply_logged(self.secure, row, lambda sha: read_masked(self.blobs.verified_path(sha), size=size),
                             survivors_guard(self.pipeline.privacy, ledger))
        except RoundFailed as err:
            return str(err)
        if self.secure.stage != stage:
            raise RuntimeError(f"round {rnd.round}'s SecAgg log replays to stage {self.secure.stage!r}, the store says {stage!r}")
        return None

    # ---- checks shared by every SecAgg request -----------------------------------------------
    def _secure_round(self, client_id: str, round: int) -> SecAggServer:
        if self.pipeline.mask is None:
            raise Refused(409, "not_secure", "this run does not use secure aggregation (secagg.enabled is false)")
        rnd = self.rnd
        if rnd is None or round != rnd.round:
            where = "no round is open" if rnd is None else f"the open round is {rnd.round}"
            raise Refused(409 if round <= self.state.rounds_done + 1 else 404, "round_not_open", f"round {round} is not open ({where})")
        if client_id not in rnd.cohort:
            raise Refused(403, "not_in_cohort", f"client {client_id} was not invited to round {round}")
        return self.secure

    def _in_stage(self, client_id: str, round: int, stage: str) -> SecAggServer:
        """The server, if `client_id` may answer `stage` now; Refused (409) saying why not otherwise."""
        server = self._secure_round(client_id, round)
        if server.stage != stage:
            raise Refused(409, "wrong_stage", f"round {round} is at SecAgg stage {server.stage!r}, not {stage!r}")
        if client_id not in stage_members(server):
            raise Refused(409, "not_in_stage", f"client {client_id} dropped out of round {round} before stage {stage!r}")
        if client_id in answered(server):
            raise Refused(409, "already_answered", f"client {client_id} already answered stage {stage!r}; a replay is refused")
        return server

    def _ready(self, client_id: str, round: int, after: str) -> SecAggServer:
        """The server, once stage `after` has closed with `client_id` among those that answered it."""
        server = self._secure_round(client_id, round)
        if ORDER.index(server.stage) <= ORDER.index(after):
            raise Refused(409, "stage_not_ready", f"stage {after!r} of round {round} is still open; ask again shortly")
        carried = {"advertise": server.adverts, "share": server.sealed, "mask": server.survivors,
                   "confirm": server.confirmations}[after]
        if client_id not in carried:
            raise Refused(409, "not_in_stage", f"client {client_id} dropped out of round {round} before stage {after!r} closed")
        return server

    # ---- client -> coordinator ---------------------------------------------------------------
    def post_secagg(self, kind: str, client_id: str, round: int, body: dict[str, Any],
                    owner: CertificateOwner | None = None) -> dict[str, Any]:
        """Accept an advert ("advert"), sealed shares ("shares"), a confirmation ("confirm") or unmask shares
        ("unmask"). `owner` (the route passes the app's ClientVerifier) says whom a certificate may speak for;
        without it only the certificate's CN is checked."""
        stage = KIND_STAGE[kind]
        with self.lock:
            server = self._in_stage(client_id, round, stage)
            try:
                message = PARSERS[kind](client_id, round, body)
            except codec.MalformedMessage as err:
                raise Refused(400, "malformed_message", str(err)) from None
            try:
                checker(server, kind)(message)
                if kind in ("advert", "confirm"):
                    check_signed(server, message, certificate_verifier(owner or common_name))
            except SecAggError as err:
                raise Refused(422, "invalid_message", str(err)) from None
            with self.store.session() as session:
                session.add(db.SecAggMessageRow(round=round, kind=kind, client_id=client_id, body=body, received_at=self.clock()))
                db.audit(session, f"secagg_{kind}", client_id=client_id, round=round)
            receiver(server, kind)(message)
            self._after_secagg_answer()
            return {"accepted": True, "round": round, "stage": stage}

    def _accept_masked(self, client_id: str, round: int, version: int, num_samples: int, metrics: dict[str, float],
                       staged: Any, vector: Any) -> dict[str, Any]:
        """A masked input through the upload route (under the lock; the staged file is the caller's to discard on refusal)."""
        server = self._in_stage(client_id, round, "mask")
        if version != self.rnd.version:
            raise Refused(409, "wrong_version", f"round {round} trains from version {self.rnd.version}, the upload says {version}")
        single = sorted(set(metrics) & set(PER_UPDATE_METRICS))
        if single:
            raise Refused(422, "per_update_metrics", f"under secure aggregation a client does not report {single}: "
                          "they describe its single update")
        message = MaskedInput(client_id, round, vector)
        try:
            server.check_masked(message)
        except SecAggError as err:
            raise Refused(422, "invalid_message", str(err)) from None
        sha = self.blobs.commit(staged)
        with self.store.session() as session:
            session.add(db.UpdateRow(round=round, client_id=client_id, version=version, sha256=sha, size=staged.size,
                                     num_samples=num_samples, metrics=metrics, received_at=self.clock()))
            session.add(db.SecAggMessageRow(round=round, kind="masked", client_id=client_id, body={"sha256": sha},
                                            received_at=self.clock()))
            session.get(db.TaskRow, (round, client_id)).status = "accepted"
            db.audit(session, "masked_input_accepted", client_id=client_id, round=round, size=staged.size, sha256=sha)
        server.receive_masked(message)
        self.secure_metrics[client_id] = dict(metrics)
        log.info("accepted masked input round=%d client=%s size=%d sha256=%s", round, client_id, staged.size, sha,
                 extra={"client_id": client_id, "round": round, "size": staged.size, "sha256": sha, "stage": "mask"})
        self._after_secagg_answer()
        return {"accepted": True, "round": round, "sha256": sha, "size": staged.size}

    # ---- coordinator -> client -----------------------------------------------------------------
    def neighbour_keys(self, client_id: str, round: int) -> dict[str, Any]:
        with self.lock:
            server = self._ready(client_id, round, "advertise")
            return codec.neighbour_keys_answer(server.neighbour_keys(client_id))

    def shares_for(self, client_id: str, round: int) -> dict[str, Any]:
        with self.lock:
            server = self._ready(client_id, round, "share")
            return codec.shares_for_answer(server.shares_for(client_id))

    def survivor_sets(self, client_id: str, round: int) -> dict[str, Any]:
        with self.lock:
            server = self._ready(client_id, round, "mask")
            return codec.survivor_sets_answer(server.survivor_sets())

    def unmask_request(self, client_id: str, round: int) -> dict[str, Any]:
        with self.lock:
            server = self._ready(client_id, round, "confirm")
            return codec.unmask_request_answer(server.unmask_request(client_id))

    # ---- closing stages -------------------------------------------------------------------------
    def _after_secagg_answer(self) -> None:
        if self.secure is not None and not stage_members(self.secure) - answered(self.secure):
            self._close_secagg_stage("all answered")

    def _tick_secagg(self, now: float) -> None:
        if not stage_members(self.secure) - answered(self.secure):
            self._close_secagg_stage("all answered")
        elif now >= self.round_row.deadline:
            self._close_secagg_stage("deadline")

    def _close_secagg_stage(self, reason: str) -> None:
        server, rnd = self.secure, self.rnd
        stage = server.stage
        if stage == "unmask":
            self._finish_secagg(reason)
            return
        following, now = FOLLOWING[stage], self.clock()
        deadline = now + stage_seconds(self.secagg_deadlines, following)
        with self.store.session() as session:
            session.add(db.SecAggMessageRow(round=rnd.round, kind="close", client_id=stage, body={"reason": reason}, received_at=now))
            row = session.get(db.RoundRow, rnd.round)
            row.stage, row.deadline = following, deadline
            db.audit(session, "secagg_stage_closed", round=rnd.round, detail=f"{stage} ({reason}): {len(answered(server))} answered")
        self.round_row.stage, self.round_row.deadline = following, deadline
        log.info("round %d: SecAgg stage %s closed (%s), %d answered", rnd.round, stage, reason, len(answered(server)),
                 extra={"round": rnd.round, "stage": stage, "answered": len(answered(server))})
        try:
            close_stage(server, stage, self._survivors_guard())
        except RoundFailed as err:
            self._abandon(f"stage {stage}: {err}")

    def _survivors_guard(self) -> Callable[[int], str | None]:
        return survivors_guard(self.pipeline.privacy, self.state.ledger)

    def _finish_secagg(self, reason: str) -> None:
        server = self.secure
        try:
            total = server.finish()
            metrics = {c: self.secure_metrics.get(c, {}) for c in server.survivors}
            accept_sum(self.rnd, total, server.survivors, metrics)
        except (RoundFailed, UpdateRejected, ValueError) as err:
            self._abandon(f"unmask: {err}")
            return
        self._close(f"secagg, unmask {reason}")

    def _abandon(self, reason: str) -> None:
        """End the open round with nothing released: the version stays, every task failed."""
        rnd = self.rnd
        new_state, _ = abandon_round(self.state, rnd)
        with self.store.session() as session:
            row = session.get(db.RoundRow, rnd.round)
            row.status, row.stage, row.closed_at = "closed", "abandoned", self.clock()
            for client in rnd.cohort:
                session.get(db.TaskRow, (rnd.round, client)).status = "failed"
            db.audit(session, "round_abandoned", round=rnd.round, detail=reason)
        log.info("round %d abandoned, nothing released: %s", rnd.round, reason, extra={"round": rnd.round})
        self.state, self.rnd, self.round_row, self.secure, self.secure_metrics = new_state, None, None, None, {}
