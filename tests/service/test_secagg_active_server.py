"""A coordinator that turns malicious, through the real app with real certificates: the clients refuse it.

The coordinator's answers are rewritten in the test (a swapped key, a key re-signed under a
certificate from another CA, a revoked neighbour, withheld confirmations). The clients check
every advert and confirmation against the federation's CA and CRL, as `fedlm join` does
(secagg_worker.identity_from_files), and refuse before sharing or unmasking anything.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from fedlm.secagg import keys
from fedlm.secagg.identity import CertificateSigner, advert_message
from fedlm.secagg.messages import SecAggError
from fedlm.service import certs
from fedlm.service import secagg_codec as codec
from fedlm.service import store as db
from fedlm.service.client_worker import Connection, JoinSettings
from fedlm.service.secagg_worker import take_part_securely
from fedlm.service.secure_stages import answered, stage_members

from conftest import INITIAL, build_service
from secagg_parties import SECURE, open_secure_round, reference_global, run_stages

FOUR = ("c0", "c1", "c2", "c3")


@pytest.fixture
def secure_service(tmp_path):
    return build_service(tmp_path, f"sqlite:///{tmp_path / 'active.db'}", names=FOUR, clients_per_round=4, overrides=SECURE)


def logged_kinds(service, client: str) -> list[str]:
    with service.coordinator.store.session() as session:
        return [m.kind for m in db.secagg_messages(session, 1) if m.client_id == client]


def rewrite_keys_for(service, monkeypatch, recipient: str, neighbour: str, advert_of) -> None:
    """The coordinator answers `recipient`'s neighbour-keys with `neighbour`'s advert replaced by advert_of(advert)."""
    honest = service.coordinator.neighbour_keys

    def malicious(client_id: str, round: int) -> dict:
        answer = honest(client_id, round)
        if client_id == recipient:
            answer["keys"][neighbour] = advert_of(answer["keys"][neighbour])
        return answer

    monkeypatch.setattr(service.coordinator, "neighbour_keys", malicious)


def swapped(advert: dict) -> dict:
    return {**advert, "mask_public": codec.b64(keys.public_bytes(keys.new_private_key()))}


def resigned_under(folder: Path, client: str):
    """The coordinator's own key pair, certified for `client` by a CA of its own making, signing its own keys."""
    certs.init_ca(folder)
    signer = CertificateSigner.from_files(*certs.issue_client(folder, client))

    def advert_of(advert: dict) -> dict:
        cipher, mask = keys.public_bytes(keys.new_private_key()), keys.public_bytes(keys.new_private_key())
        return {"cipher_public": codec.b64(cipher), "mask_public": codec.b64(mask), "certificate": signer.credential.decode(),
                "signature": codec.b64(signer.sign(advert_message(1, client, cipher, mask)))}

    return advert_of


@pytest.mark.parametrize("attack", ["swapped key", "re-signed under another CA"])
def test_a_client_refuses_a_neighbour_key_the_coordinator_rewrote(secure_service, monkeypatch, tmp_path, attack):
    # Prepare: every client advertised; the coordinator rewrites c1's advert in what it sends c0
    parties = open_secure_round(secure_service, FOUR)
    run_stages(parties, stages=("advertise",))
    advert_of = swapped if attack == "swapped key" else resigned_under(tmp_path / "evil-ca", "c1")
    rewrite_keys_for(secure_service, monkeypatch, "c0", "c1", advert_of)
    # Execute
    with pytest.raises(SecAggError, match="neighbour c1 fails its signature check"):
        parties["c0"].share()
    # Assert: c0 sealed nothing to anyone; the others, shown the true keys, share as usual
    assert parties["c0"].client_state.stage == "aborted" and logged_kinds(secure_service, "c0") == ["advert"]
    assert parties["c2"].share().status_code == 200


def test_a_neighbour_revoked_mid_round_is_refused_even_when_the_coordinator_relays_it(secure_service):
    # Prepare: c1 advertised, then its certificate is revoked; its logged advert is still relayed
    parties = open_secure_round(secure_service, FOUR)
    run_stages(parties, stages=("advertise",))
    folder = secure_service.root / "certs"
    certs.revoke(folder, folder / "clients" / "c1.pem")
    # Execute / Assert: the client checks the CRL it trusts, so it shares with no one
    with pytest.raises(SecAggError, match="neighbour c1 fails its signature check"):
        parties["c0"].share()
    assert logged_kinds(secure_service, "c0") == ["advert"]


def test_a_client_releases_no_share_when_the_coordinator_withholds_confirmations(secure_service, monkeypatch):
    # Prepare: a round of four (t = 2) up to its unmask stage; c0 is shown one neighbour's signature only
    parties = open_secure_round(secure_service, FOUR)
    run_stages(parties, stages=("advertise", "share", "mask", "confirm"))
    honest = secure_service.coordinator.unmask_request

    def withholding(client_id: str, round: int) -> dict:
        answer = honest(client_id, round)
        if client_id == "c0":
            answer["signatures"] = dict(list(answer["signatures"].items())[:1])
        return answer

    monkeypatch.setattr(secure_service.coordinator, "unmask_request", withholding)
    # Execute
    with pytest.raises(SecAggError, match="only 1 surviving neighbours signed the survivor sets; 2 must"):
        parties["c0"].unmask()
    # Assert: nothing of c0's reached the unmask stage; the untouched clients still unmask the exact sum
    assert "unmask" not in logged_kinds(secure_service, "c0")
    for name in FOUR[1:]:
        assert parties[name].unmask().status_code == 200
    coordinator = secure_service.coordinator
    secure_service.clock.now = coordinator.round_row.deadline + 1  # the unmask stage closes without c0
    coordinator.tick()
    assert coordinator.state.version == 1
    assert coordinator.state.global_vector.tobytes() == reference_global(secure_service, parties, FOUR).tobytes()


def worker_connection(service, name: str) -> Connection:
    """`fedlm join`'s retrying connection over the in-process app, with the client's real JoinSettings."""
    folder = service.root / "certs"
    conn = Connection.__new__(Connection)
    conn.http = service.clients[name]
    conn.settings = JoinSettings(server="https://in-process", data=Path("."), cert=folder / "clients" / f"{name}.pem",
                                 key=folder / "clients" / f"{name}.key", ca=folder / certs.CA_CERT, give_up_after=10.0)
    conn.delay = lambda attempt: 0.01
    return conn


def run_workers(service, names) -> dict[str, str]:
    """take_part_securely for each client, one thread each, signing with its certificate from its settings;
    once a worker has left the round, the stage it left open closes at its deadline (the clock jumps to it)."""
    outcomes: dict[str, str] = {}
    tasks = {n: service.clients[n].post("/v1/tasks/next", json={}).json()["task"] for n in names}

    def worker(name: str) -> None:
        vector = np.full(INITIAL.size, 0.5, np.float32)
        outcomes[name] = take_part_securely(worker_connection(service, name), name, tasks[name], INITIAL.size,
                                            lambda: (vector, 1, {"train_loss": 1.0}))

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()
    coordinator, waited = service.coordinator, 0.0
    while any(t.is_alive() for t in threads) and waited < 30:
        time.sleep(0.02)
        waited += 0.02
        left = {n for n, outcome in outcomes.items() if outcome == "refused_by_client"}
        with coordinator.lock:
            server = coordinator.secure
            waiting_on_leavers = server is not None and left and stage_members(server) - answered(server) <= left
            if waiting_on_leavers:
                service.clock.now = coordinator.round_row.deadline + 1
                coordinator.tick()
    return outcomes


def test_join_workers_sign_confirm_and_unmask_an_honest_round(secure_service, monkeypatch):
    # Prepare
    monkeypatch.setattr("fedlm.service.secagg_worker.POLL_SECONDS", 0.01)
    for name in FOUR:
        secure_service.clients[name].post("/v1/clients/register", json={})
    # Execute
    outcomes = run_workers(secure_service, FOUR)
    # Assert: every stage done by every worker, the confirmations logged, the mean of four 0.5s applied
    coordinator = secure_service.coordinator
    assert outcomes == dict.fromkeys(FOUR, "unmasked") and coordinator.state.version == 1
    assert all(logged_kinds(secure_service, n) == ["advert", "shares", "masked", "confirm", "unmask"] for n in FOUR)
    np.testing.assert_allclose(coordinator.state.global_vector, INITIAL + 0.5, atol=1e-6)


def test_a_join_worker_leaves_a_round_whose_keys_the_coordinator_swapped(secure_service, monkeypatch):
    # Prepare: the coordinator swaps c1's key in what it sends c0
    monkeypatch.setattr("fedlm.service.secagg_worker.POLL_SECONDS", 0.01)
    for name in FOUR:
        secure_service.clients[name].post("/v1/clients/register", json={})
    rewrite_keys_for(secure_service, monkeypatch, "c0", "c1", swapped)
    # Execute
    outcomes = run_workers(secure_service, FOUR)
    # Assert: c0 left before sealing a share; the others finished the round without it
    assert outcomes == {"c0": "refused_by_client", "c1": "unmasked", "c2": "unmasked", "c3": "unmasked"}
    assert logged_kinds(secure_service, "c0") == ["advert"] and secure_service.coordinator.state.version == 1
    with secure_service.coordinator.store.session() as session:
        audit = session.scalars(select(db.AuditRow).where(db.AuditRow.event == "secagg_shares")).all()
        assert sorted(a.client_id for a in audit) == ["c1", "c2", "c3"]
