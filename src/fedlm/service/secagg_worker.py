"""The client's side of one SecAgg+ round over HTTP (Bell et al. 2020): the protocol's client state machine, moved.

advertise signed keys -> [train, in a thread] -> fetch and verify the neighbours' signed
keys -> post sealed shares -> fetch the shares for me -> [training done] encode to uint32,
mask, upload -> fetch the survivor sets, post my signature on them -> fetch the unmask
request, verify the neighbours' signatures -> post unmask shares. Training overlaps the
key exchange. A 409 `stage_not_ready` means "ask again shortly"; a refusal that says the
round went on without this client (round closed or abandoned, dropped from a stage) ends
its part in the round, as does a message from the coordinator that the state machine
refuses (too few neighbours, a tampered share, a neighbour's advert or survivor-set
signature that does not verify: Bonawitz et al. 2017 §6's defence against an active
server). The client signs with its TLS certificate's key and trusts a neighbour's
certificate only if it chains to the CA it already trusts for the server (`--ca`), is
within its dates, names that neighbour, and, where the join settings have a `crl`, is not
revoked. The client's secrets (private keys, self-mask seed) live only in this process:
a client that restarts mid-round drops out of that round. Only the masked vector and
metrics that do not describe the single update leave the client.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509

from fedlm.secagg.client import SecAggClient
from fedlm.secagg.identity import CertificateSigner, Verifier, certificate_verifier, common_name, trusted_owner
from fedlm.secagg.keys import ShareTampered
from fedlm.secagg.messages import RoundParameters, SecAggError
from fedlm.secagg.prg import MaskStream
from fedlm.service import secagg_codec as codec
from fedlm.service.certs import ClientVerifier
from fedlm.service.errors import Refused
from fedlm.service.transport import Connection, ServerRefused
from fedlm.service.payloads import masked_payload
from fedlm.secagg.inputs import PER_UPDATE_METRICS

log = logging.getLogger("fedlm.join")
POLL_SECONDS = 0.2
# refusals after which this client has no further part in the round
LEFT_ROUND = ("round_not_open", "not_in_stage", "wrong_stage", "not_in_cohort")
# trains on the task: () -> (float32 update after the client steps, samples, metrics)
Training = Callable[[], tuple[np.ndarray, int, dict[str, float]]]


class LeftRound(Exception):
    """The round went on (or ended) without this client."""


@dataclass(frozen=True)
class ClientIdentity:
    """What a `fedlm join` client signs with (its certificate and key) and whom it trusts (the CA's clients)."""

    signer: CertificateSigner
    verify: Verifier

    @property
    def client_id(self) -> str | None:
        return common_name(x509.load_pem_x509_certificate(self.signer.credential))


def identity_from_files(cert: Path, key: Path, ca: Path, crl: Path | None = None) -> ClientIdentity:
    """The signer from the client's certificate and key; neighbours' certificates checked against `ca` (and `crl`)."""
    checker = ClientVerifier(Path(ca), Path(crl) if crl else None)
    return ClientIdentity(CertificateSigner.from_files(Path(cert), Path(key)),
                          certificate_verifier(trusted_owner(checker.identify, Refused)))


def join_identity(settings: Any) -> ClientIdentity:
    """The identity a join's settings (JoinSettings: cert, key, ca, and `crl` where it has one) describe."""
    return identity_from_files(settings.cert, settings.key, settings.ca, getattr(settings, "crl", None))


def wait_for(conn: Connection, path: str) -> dict[str, Any]:
    """GET `path` until its stage has closed."""
    while True:
        try:
            return conn.request("GET", path).json()
        except ServerRefused as err:
            if err.code == "stage_not_ready":
                time.sleep(POLL_SECONDS)
                continue
            if err.code in LEFT_ROUND:
                raise LeftRound(err.code) from None
            raise


def send(conn: Connection, method: str, path: str, **kwargs: Any) -> None:
    """POST, where `already_answered` means an earlier try landed and only its answer was lost."""
    try:
        conn.request(method, path, **kwargs)
    except ServerRefused as err:
        if err.code == "already_answered":
            return
        if err.code in LEFT_ROUND:
            raise LeftRound(err.code) from None
        raise


def checked_parameters(task: dict[str, Any], me: str, size: int) -> RoundParameters:
    """The task's SecAgg parameters (SecAggClient refuses a threshold below a majority of neighbours)."""
    params = codec.parameters_from_answer(task["round"], task["secagg"])
    if params.size != size:
        raise SecAggError(f"the task masks {params.size} values; the global has {size}")
    return params


def take_part_securely(conn: Connection, me: str, task: dict[str, Any], size: int, train: Training,
                       identity: ClientIdentity | None = None) -> str:
    """One SecAgg round; returns 'unmasked' when this client did every stage, else why it stopped.

    `identity` defaults to the one the connection's settings describe (join_identity)."""
    try:
        identity = identity or join_identity(conn.settings)
        return _run_stages(conn, me, task, checked_parameters(task, me, size), train, identity)
    except LeftRound as err:
        return str(err)
    except SecAggError as err:
        log.warning("client %s round %d: leaving the SecAgg round: %s", me, task["round"], err)
        return "refused_by_client"
    except (ShareTampered, codec.MalformedMessage) as err:
        log.warning("client %s round %d: leaving the SecAgg round: %s", me, task["round"], type(err).__name__)
        return "refused_by_client"


def _run_stages(conn: Connection, me: str, task: dict[str, Any], params: RoundParameters, train: Training,
                identity: ClientIdentity) -> str:
    round = task["round"]
    base = f"/v1/rounds/{round}/secagg"
    if identity.client_id != me:
        raise SecAggError(f"the coordinator calls this client {me!r}; its certificate names {identity.client_id!r}")
    client = SecAggClient(me, params, signer=identity.signer, verify=identity.verify)
    send(conn, "POST", f"{base}/keys", json=codec.advert_body(client.advertise()))
    with ThreadPoolExecutor(1) as pool:
        training = pool.submit(train)
        keys = codec.neighbour_keys_from_answer(wait_for(conn, f"{base}/neighbour-keys"))
        send(conn, "POST", f"{base}/shares", json=codec.shares_body(client.share_keys(keys)))
        shares = codec.shares_for_from_answer(wait_for(conn, f"{base}/shares"))
        vector, _, metrics = training.result()
    encoded = params.encoding.encode(vector, np.random.default_rng(secrets.randbits(128)), np.empty(params.size, np.uint32))
    body = masked_payload(client.mask_input(shares, encoded, MaskStream(params.size)).vector)
    kept = {k: v for k, v in metrics.items() if k not in PER_UPDATE_METRICS} | {"bytes_up": float(len(body))}
    # num_samples = 1: under SecAgg the weighting is uniform, and the count would describe this client alone
    send(conn, "POST", f"/v1/rounds/{round}/updates", content=body, params={"version": task["version"], "num_samples": 1},
         headers={"X-Fedlm-Metrics": json.dumps(kept), "Content-Type": "application/octet-stream"})
    log.info("client %s round %d: masked input sent (%d bytes)", me, round, len(body))
    sets = codec.survivor_sets_from_answer(wait_for(conn, f"{base}/survivors"))
    send(conn, "POST", f"{base}/confirm", json=codec.confirm_body(client.confirm(sets)))
    request = codec.unmask_request_from_answer(wait_for(conn, f"{base}/unmask-request"))
    send(conn, "POST", f"{base}/unmask", json=codec.unmask_body(client.unmask(request)))
    return "unmasked"
