"""Revocation fails closed: a missing, empty or forged CRL admits nobody; `certs revoke` replaces the CRL atomically.

Red-team finding 5 of the fleet issue: with crl.pem moved away a revoked certificate was
accepted again, and an empty crl.pem gave a 500 to everyone.
"""

from __future__ import annotations

import os

import pytest

from fedlm.service import certs

from conftest import make_app, client_for


def status_of(service, name: str) -> tuple[int, str]:
    answer = service.clients[name].post("/v1/clients/register", json={})
    return answer.status_code, answer.json().get("error", "")


def fresh_app(service):
    """What a (re)started server builds: the verifier reads the CRL at start."""
    app = make_app(service.coordinator, service.root)
    for name in ("alice", "bob"):
        service.clients[name] = client_for(app, service.root / "certs" / "clients" / f"{name}.pem")


def test_a_crl_moved_away_refuses_everyone_instead_of_readmitting_the_revoked(service):
    # Prepare: alice is revoked, then the CRL disappears while the server runs.
    certs.revoke(service.root / "certs", service.root / "certs" / "clients" / "alice.pem")
    assert status_of(service, "alice") == (403, "revoked_certificate") and status_of(service, "bob")[0] == 200
    (service.root / "certs" / certs.CRL).rename(service.root / "certs" / "crl.pem.moved")
    # Execute / Assert: nobody gets in, with a code that says why.
    assert status_of(service, "alice") == (503, "crl_unavailable")
    assert status_of(service, "bob") == (503, "crl_unavailable")
    # Restored, the list applies again.
    (service.root / "certs" / "crl.pem.moved").rename(service.root / "certs" / certs.CRL)
    os.utime(service.root / "certs" / certs.CRL)
    assert status_of(service, "alice") == (403, "revoked_certificate") and status_of(service, "bob")[0] == 200


@pytest.mark.parametrize("content", [b"", b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n"])
def test_an_empty_or_unreadable_crl_is_a_503_not_a_500(service, content):
    (service.root / "certs" / certs.CRL).write_bytes(content)
    os.utime(service.root / "certs" / certs.CRL, (1, 1))  # a new mtime, so the server re-reads it
    assert status_of(service, "bob") == (503, "crl_unavailable")


def test_a_crl_signed_by_another_ca_admits_nobody_and_stops_a_start(service, tmp_path):
    # Prepare: another CA's (empty) CRL in place of ours, as an attacker with write access could leave it.
    certs.init_ca(tmp_path / "other")
    (service.root / "certs" / certs.CRL).write_bytes((tmp_path / "other" / certs.CRL).read_bytes())
    os.utime(service.root / "certs" / certs.CRL, (2, 2))
    # Execute / Assert
    assert status_of(service, "bob") == (503, "crl_unavailable")
    with pytest.raises(ValueError, match="not signed by the CA"):
        fresh_app(service)


def test_revoke_replaces_the_crl_atomically(service, monkeypatch):
    # Prepare: watch the renames revoke makes.
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((str(a), str(b))), real_replace(a, b))[1])
    # Execute
    certs.revoke(service.root / "certs", service.root / "certs" / "clients" / "alice.pem")
    # Assert: the new list was written beside the old one and renamed over it; nothing is left behind.
    crl = str(service.root / "certs" / certs.CRL)
    assert renames == [(crl + ".new", crl)]
    assert not (service.root / "certs" / "crl.pem.new").exists()
    assert status_of(service, "alice") == (403, "revoked_certificate")
