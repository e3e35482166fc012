"""Refused authentications leave a trace: a log line, an audit row, a Prometheus count (red-team finding 9 of the fleet issue).

Before: a failed TLS handshake and a 401/403 outside the upload route were neither logged nor
audited. Now each is, rate-limited so that a flood cannot fill the disk or the audit table.
"""

from __future__ import annotations

import logging
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from fedlm.service import certs
from fedlm.service import store as db
from fedlm.service.auth_trail import AuthTrail, Window, admit
from fedlm.service.metrics import ServiceMetrics
from fedlm.service.tls import with_tls_extension

from conftest import FakeClock, make_app
from live_server import client_context, connect, issue_expired, live_server, read_response


def audit_rows(service) -> list[db.AuditRow]:
    with service.coordinator.store.session() as session:
        return list(session.scalars(select(db.AuditRow).where(db.AuditRow.event == "auth_refused").order_by(db.AuditRow.id)))


def refusals_counted(client, reason: str) -> float:
    """fedlm_auth_refused_total{reason} as Prometheus scrapes it from /metrics."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "fedlm_auth_refused_total" and sample.labels == {"reason": reason}:
                return sample.value
    return 0.0


def auth_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fedlm.service" and "authentication refused" in r.getMessage()]


def test_admit_writes_per_minute_then_counts_and_reports_the_rest_in_the_next_minute():
    window, written, reports = Window(0.0), 0, []
    for second in range(25):  # 25 refusals in the first minute, 3 allowed
        window, write, left_out = admit(window, float(second), 3)
        written += write
        reports.append(left_out)
    window, write, left_out = admit(window, 61.0, 3)  # the first of the next minute
    assert (written, sum(reports), window.left_out) == (3, 0, 0)
    assert (write, left_out, window.written) == (True, 22, 1)


def test_a_401_outside_the_upload_route_is_logged_audited_and_counted(service, caplog):
    # Execute
    with caplog.at_level(logging.INFO):
        answer = service.clients["anonymous"].get("/v1/status")
    # Assert
    assert answer.status_code == 401
    assert [r.getMessage() for r in auth_lines(caplog)] == [
        "authentication refused (no_client_certificate): GET /v1/status without a client certificate"]
    rows = audit_rows(service)
    assert [(r.client_id, r.sha256, r.detail) for r in rows] == [
        (None, None, "no_client_certificate: GET /v1/status without a client certificate")]
    assert refusals_counted(service.clients["bob"], "no_client_certificate") == 1


def test_a_403_names_the_client_and_the_certificate_fingerprint_only(service, caplog):
    # Prepare: alice's certificate is revoked.
    pem = service.root / "certs" / "clients" / "alice.pem"
    certs.revoke(service.root / "certs", pem)
    fingerprint = x509.load_pem_x509_certificate(pem.read_bytes()).fingerprint(hashes.SHA256()).hex()
    # Execute
    with caplog.at_level(logging.INFO):
        answer = service.clients["alice"].get("/v1/config")
    # Assert: the CN and the fingerprint, nothing else of the certificate.
    assert (answer.status_code, answer.json()["error"]) == (403, "revoked_certificate")
    (line,) = auth_lines(caplog)
    assert line.getMessage() == (f"authentication refused (revoked_certificate): GET /v1/config client=alice "
                                 f"certificate sha256={fingerprint[:16]}")
    assert "BEGIN CERTIFICATE" not in caplog.text
    assert [(r.client_id, r.sha256, r.detail) for r in audit_rows(service)] == [
        ("alice", fingerprint, "revoked_certificate: GET /v1/config")]
    assert refusals_counted(service.clients["bob"], "revoked_certificate") == 1


def test_a_flood_is_counted_in_full_but_logged_and_audited_at_most_per_minute(service, caplog):
    # Prepare: a trail allowing 3 a minute, on a clock the test moves.
    clock, metrics = FakeClock(), ServiceMetrics()
    trail = AuthTrail(service.coordinator.store, metrics, per_minute=3, clock=clock)
    # Execute: 10 refusals in one minute, then a quiet minute and a tick.
    with caplog.at_level(logging.INFO):
        for _ in range(10):
            trail.refused("no_client_certificate", "GET /v1/status without a client certificate")
        clock.now += 61
        trail.flush()
        trail.flush()  # reported once
    # Assert: 3 lines and rows, then one of each saying 7 were left out; all 10 counted.
    messages = [r.getMessage() for r in caplog.records if r.name == "fedlm.service"]
    assert len(messages) == 4 and messages[3].startswith("7 more authentication refusals in the last minute were not logged")
    assert [r.detail for r in audit_rows(service)][3:] == ["7 more refusals in the minute before were not logged"]
    assert len(audit_rows(service)) == 4
    assert metrics.registry.get_sample_value("fedlm_auth_refused_total", {"reason": "no_client_certificate"}) == 10


def failed_handshake(port: int, context: ssl.SSLContext) -> None:
    """Connect and ask; the server hangs up (TLS 1.3 lets the client finish its side of the handshake first)."""
    try:
        sock = connect(port, context, timeout=3)
        sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: fedlm\r\n\r\n")
        assert read_response(sock)[0] == 0  # no answer
    except (ssl.SSLError, ConnectionError):
        pass


@pytest.mark.parametrize("case", ["expired", "other_ca"])
def test_a_failed_tls_handshake_is_logged_audited_and_counted(service, caplog, case):
    # Prepare: a certificate the TLS layer refuses.
    if case == "expired":
        issue_expired(service.root / "certs", "old")
        context, expected = client_context(service.root, "old"), "client certificate rejected: certificate has expired"
    else:
        certs.init_ca(service.root / "other")
        certs.issue_client(service.root / "other", "mallory")
        context = client_context(service.root, None)
        context.load_cert_chain(str(service.root / "other" / "clients" / "mallory.pem"),
                                str(service.root / "other" / "clients" / "mallory.key"))
        expected = "client certificate rejected: certificate signature failure"  # same CA name, another key
    app = make_app(service.coordinator, service.root)
    with live_server(app, service.root) as port, caplog.at_level(logging.INFO):
        # Execute
        failed_handshake(port, context)
        deadline = time.monotonic() + 3
        while not audit_rows(service) and time.monotonic() < deadline:
            time.sleep(0.02)
    # Assert: one line, one row, one count; the reason is OpenSSL's, nothing from the peer.
    assert [r.getMessage() for r in auth_lines(caplog)] == [
        f"authentication refused (tls_certificate_rejected): TLS handshake failed: {expected}"]
    assert [r.detail for r in audit_rows(service)] == [f"tls_certificate_rejected: TLS handshake failed: {expected}"]
    bob = TestClient(with_tls_extension(app, service.clients["bob"].tls))
    assert refusals_counted(bob, "tls_certificate_rejected") == 1


def test_a_failed_handshake_is_audited_by_the_tick_never_on_the_event_loop():
    from fedlm.service.auth_trail import AuthTrail
    from fedlm.service.metrics import ServiceMetrics

    class RecordingStore:
        sessions = 0

        def session(self):
            RecordingStore.sessions += 1
            raise ConnectionError("the database is slow")  # _audit logs and goes on

    trail = AuthTrail(RecordingStore(), ServiceMetrics())
    trail.handshake_refused("tls_handshake_failed", "bad record")
    assert RecordingStore.sessions == 0  # queued: the event loop never waited on the database
    trail.flush()
    assert RecordingStore.sessions == 1
    trail.flush()
    assert RecordingStore.sessions == 1  # written once
