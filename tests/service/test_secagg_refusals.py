"""Every SecAgg refusal is a 4xx JSON body naming what was wrong, and leaves the round, tables and blobs as they were.

Prepare: a round of four at `stage`, every earlier stage done and c0 already answered
this one. Execute: one bad request. Assert: status, error code, unchanged snapshot.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import func, select

from fedlm.secagg import keys, shamir
from fedlm.secagg.identity import CertificateSigner, advert_message
from fedlm.service import certs
from fedlm.service import secagg_codec as codec
from fedlm.service import store as db
from fedlm.service.payloads import masked_payload
from fedlm.updates import wire

from conftest import build_service
from secagg_parties import SECURE, STAGES, open_secure_round, run_stages

FOUR = ("c0", "c1", "c2", "c3")


def fresh_keys() -> dict[str, str]:
    """Well-formed keys with a certificate and signature that the coordinator's signature check would refuse."""
    return {"cipher_public": codec.b64(keys.public_bytes(keys.new_private_key())),
            "mask_public": codec.b64(keys.public_bytes(keys.new_private_key())),
            "certificate": "-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n",
            "signature": codec.b64(bytes(70))}


def signed_keys(service, name: str, *, as_client: str | None = None, signer: str | None = None) -> dict[str, str]:
    """Fresh keys with `signer`'s certificate and signature, over an advert for `as_client` (both default to `name`)."""
    folder = service.root / "certs" / "clients"
    who = signer or name
    identity = CertificateSigner.from_files(folder / f"{who}.pem", folder / f"{who}.key")
    cipher, mask = keys.public_bytes(keys.new_private_key()), keys.public_bytes(keys.new_private_key())
    signature = identity.sign(advert_message(1, as_client or name, cipher, mask))
    return {"cipher_public": codec.b64(cipher), "mask_public": codec.b64(mask),
            "certificate": identity.credential.decode(), "signature": codec.b64(signature)}


def keys_certified_elsewhere(service, name: str) -> dict[str, str]:
    """Correctly signed keys under a certificate for `name` that another CA issued."""
    folder = service.root / "other-ca"
    certs.init_ca(folder)
    identity = CertificateSigner.from_files(*certs.issue_client(folder, name))
    cipher, mask = keys.public_bytes(keys.new_private_key()), keys.public_bytes(keys.new_private_key())
    return {"cipher_public": codec.b64(cipher), "mask_public": codec.b64(mask), "certificate": identity.credential.decode(),
            "signature": codec.b64(identity.sign(advert_message(1, name, cipher, mask)))}


def boxes(peers, size=codec.SEALED_BOX_BYTES) -> dict:
    return {"sealed": {p: codec.b64(bytes(size)) for p in peers}, "seed_commitment": codec.b64(bytes(32))}


def post(service, name, path, body):
    return service.clients[name].post(f"/v1/rounds/1/secagg/{path}", json=body)


def upload(service, name, body, metrics=None):
    return service.clients[name].post("/v1/rounds/1/updates", content=body, params={"version": 0, "num_samples": 1},
                                      headers={"X-Fedlm-Metrics": json.dumps(metrics or {})})


MASKED = masked_payload(np.arange(6, dtype=np.uint32))
CASES = {
    "replayed advert": ("advertise", lambda s: post(s, "c0", "keys", fresh_keys()), 409, "already_answered"),
    "advert from a non-member": ("advertise", lambda s: post(s, "zed", "keys", fresh_keys()), 403, "not_in_cohort"),
    "advert without a certificate": ("advertise", lambda s: post(s, "anonymous", "keys", fresh_keys()), 401, "no_client_certificate"),
    "key not base64": ("advertise", lambda s: post(s, "c1", "keys", {**fresh_keys(), "mask_public": "!!not base64!!"}), 400, "malformed_message"),
    "key of 31 bytes": ("advertise", lambda s: post(s, "c1", "keys", {**fresh_keys(), "cipher_public": codec.b64(bytes(31))}), 400, "malformed_message"),
    "low-order key": ("advertise", lambda s: post(s, "c1", "keys", {**fresh_keys(), "mask_public": codec.b64(bytes(32))}), 422, "invalid_message"),
    "advert missing a key": ("advertise", lambda s: post(s, "c1", "keys", {"cipher_public": fresh_keys()["cipher_public"]}), 422, "invalid_request"),
    "advert with a bogus certificate": ("advertise", lambda s: post(s, "c1", "keys", fresh_keys()), 422, "invalid_message"),
    "advert signed for another client": ("advertise", lambda s: post(s, "c1", "keys", signed_keys(s, "c1", as_client="c2")), 422, "invalid_message"),
    "advert under another client's certificate": ("advertise", lambda s: post(s, "c1", "keys", signed_keys(s, "c1", signer="c2")), 422, "invalid_message"),
    "advert certified by another CA": ("advertise", lambda s: post(s, "c1", "keys", keys_certified_elsewhere(s, "c1")), 422, "invalid_message"),
    "advert certificate not ASCII": ("advertise", lambda s: post(s, "c1", "keys", {**signed_keys(s, "c1"), "certificate": "é"}), 400, "malformed_message"),
    "advert signature of 200 bytes": ("advertise", lambda s: post(s, "c1", "keys", {**signed_keys(s, "c1"), "signature": codec.b64(bytes(200))}), 400, "malformed_message"),
    "neighbour keys too early": ("advertise", lambda s: s.clients["c0"].get("/v1/rounds/1/secagg/neighbour-keys"), 409, "stage_not_ready"),
    "shares in the advertise stage": ("advertise", lambda s: post(s, "c1", "shares", boxes(("c0", "c2", "c3"))), 409, "wrong_stage"),
    "secagg route for another round": ("advertise", lambda s: s.clients["c1"].post("/v1/rounds/7/secagg/keys", json=fresh_keys()), 404, "round_not_open"),
    "replayed shares": ("share", lambda s: post(s, "c0", "shares", boxes(("c1", "c2", "c3"))), 409, "already_answered"),
    "box of 159 bytes": ("share", lambda s: post(s, "c1", "shares", boxes(("c0", "c2", "c3"), size=159)), 400, "malformed_message"),
    "a neighbour left out": ("share", lambda s: post(s, "c1", "shares", boxes(("c0", "c2"))), 422, "invalid_message"),
    "advert after its stage closed": ("share", lambda s: post(s, "c1", "keys", fresh_keys()), 409, "wrong_stage"),
    "shares for me too early": ("share", lambda s: s.clients["c0"].get("/v1/rounds/1/secagg/shares"), 409, "stage_not_ready"),
    "float32 instead of a masked input": ("mask", lambda s: upload(s, "c1", wire.serialize_dense(np.ones(6, np.float32))), 400, "malformed_update"),
    "masked input of 5 values": ("mask", lambda s: upload(s, "c1", masked_payload(np.arange(5, dtype=np.uint32))), 400, "malformed_update"),
    "per-update metrics": ("mask", lambda s: upload(s, "c1", MASKED, {"train_loss": 1.0, "update_norm": 3.0}), 422, "per_update_metrics"),
    "replayed masked input": ("mask", lambda s: upload(s, "c0", MASKED), 409, "already_answered"),
    "unmask request too early": ("mask", lambda s: s.clients["c0"].get("/v1/rounds/1/secagg/unmask-request"), 409, "stage_not_ready"),
    "survivor sets too early": ("mask", lambda s: s.clients["c0"].get("/v1/rounds/1/secagg/survivors"), 409, "stage_not_ready"),
    "confirm in the mask stage": ("mask", lambda s: post(s, "c1", "confirm", {"signature": codec.b64(bytes(70))}), 409, "wrong_stage"),
    "replayed confirm": ("confirm", lambda s: post(s, "c0", "confirm", {"signature": codec.b64(bytes(70))}), 409, "already_answered"),
    "confirm with a forged signature": ("confirm", lambda s: post(s, "c1", "confirm", {"signature": codec.b64(bytes(70))}), 422, "invalid_message"),
    "confirm signature not base64": ("confirm", lambda s: post(s, "c1", "confirm", {"signature": "!!"}), 400, "malformed_message"),
    "unmask request before confirm closed": ("confirm", lambda s: s.clients["c0"].get("/v1/rounds/1/secagg/unmask-request"), 409, "stage_not_ready"),
    "share above the prime": ("unmask", lambda s: post(s, "c1", "unmask", {
        "seed_shares": {p: codec.b64(b"\xff" * shamir.SHARE_BYTES) for p in ("c0", "c2", "c3")}, "key_shares": {}}), 422, "invalid_message"),
    "replayed unmask": ("unmask", lambda s: post(s, "c0", "unmask", {"seed_shares": {}, "key_shares": {}}), 409, "already_answered"),
    "masked input after its stage closed": ("unmask", lambda s: upload(s, "c1", MASKED), 409, "wrong_stage"),
}


def snapshot(service):
    coordinator = service.coordinator
    server = coordinator.secure
    protocol = (server.stage, sorted(server.adverts), sorted(server.sealed), list(server.masked), server.total.tobytes(),
                sorted(server.confirmations), sorted(server.replies))
    with coordinator.store.session() as session:
        counts = tuple(session.scalar(select(func.count()).select_from(t)) for t in (db.SecAggMessageRow, db.UpdateRow, db.VersionRow))
        round_row = session.get(db.RoundRow, 1)
        rows = (round_row.stage, round_row.status, round_row.deadline, db.tasks_of(session, 1))
    files = sorted(str(p) for p in (service.root / "blobs").rglob("*") if p.is_file())
    return protocol, counts, rows, files, coordinator.state.version


@pytest.mark.parametrize("case", list(CASES))
def test_secagg_refusal_is_4xx_json_and_leaves_state_unchanged(tmp_path, case):
    # Prepare
    stage, request, status, code = CASES[case]
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'refuse.db'}", names=(*FOUR, "zed"), clients_per_round=4,
                            overrides=SECURE)
    parties = open_secure_round(service, FOUR)
    service.clients["zed"].post("/v1/clients/register", json={})
    run_stages(parties, stages=STAGES[: STAGES.index(stage)])
    assert parties["c0"].act(stage).status_code == 200
    before = snapshot(service)
    # Execute
    response = request(service)
    # Assert
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert snapshot(service) == before


def test_secagg_routes_refuse_a_plain_run(service):
    service.clients["alice"].post("/v1/clients/register", json={})
    response = service.clients["alice"].post("/v1/rounds/1/secagg/keys", json=fresh_keys())
    assert (response.status_code, response.json()["error"]) == (409, "not_secure")


def test_a_plain_round_refuses_a_masked_input(service):
    for name in ("alice", "bob"):
        service.clients[name].post("/v1/clients/register", json={})
        service.clients[name].post("/v1/tasks/next", json={})
    response = upload(service, "alice", MASKED)
    assert (response.status_code, response.json()["error"]) == (400, "malformed_update")
    assert "F32" in response.json()["detail"]


def test_a_client_that_missed_a_stage_sits_the_round_out(tmp_path):
    # Prepare: c4 advertises but never shares; the share stage closes at its deadline without it
    names = (*FOUR, "c4")
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'missed.db'}", names=names, clients_per_round=5, overrides=SECURE)
    parties = open_secure_round(service, names)
    run_stages(parties, stages=("advertise", "share"), silent={"c4": "share"})
    before = snapshot(service)
    # Execute
    fetched = service.clients["c4"].get("/v1/rounds/1/secagg/shares")
    late = post(service, "c4", "shares", boxes(FOUR))
    task = service.clients["c4"].post("/v1/tasks/next", json={}).json()["task"]
    # Assert: refused with what happened, no task offered, nothing changed; the others go on
    assert (fetched.status_code, fetched.json()["error"]) == (409, "not_in_stage")
    assert (late.status_code, late.json()["error"]) == (409, "wrong_stage")
    assert task is None and snapshot(service) == before
    assert service.clients["c0"].get("/v1/rounds/1/secagg/shares").status_code == 200
