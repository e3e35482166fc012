"""Slow, held and oversized requests cannot starve the service (red-team finding 6 of the fleet issue).

Before: no deadline on a request's head or body, no per-client upload limit, no cap on staging
space; a connection dripping its headers stayed open 45 s, and four held uploads with a large
Content-Length took a small disk. Each test runs the real app under the real uvicorn with
mutual TLS on loopback (tests/service/live_server.py), with limits of a second or less.
"""

from __future__ import annotations

import contextlib
import select
import ssl
import time

import numpy as np
import pytest

from fedlm.config import ConfigError
from fedlm.service import certs
from fedlm.service import store as db
from fedlm.service.app import create_app
from fedlm.service.request_guard import RequestLimits
from fedlm.service.settings import ServerSection, settings_from_dict
from fedlm.updates import wire

from conftest import MAX_UPLOAD, build_service
from live_server import client_context, connect, live_server, read_response

BODY = wire.serialize_dense(np.ones(6, np.float32))  # 40 bytes: a valid update of the test run
FAST = RequestLimits(read_timeout_seconds=0.5, max_body_seconds=1.5, max_staging_bytes=2**20)
PATIENT = RequestLimits(read_timeout_seconds=10.0, max_body_seconds=20.0, max_staging_bytes=2**20)


@contextlib.contextmanager
def serving(tmp_path, limits: RequestLimits, names=("alice", "bob")):
    """A round open with `names` in its cohort, served over mTLS with `limits`; yields (service, port)."""
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'fedlm.db'}", clients_per_round=len(names))
    for name in names:
        service.clients[name].post("/v1/clients/register", json={})
        service.clients[name].post("/v1/tasks/next", json={})
    assert service.coordinator.rnd is not None and set(service.coordinator.rnd.cohort) == set(names)
    verifier = certs.ClientVerifier(tmp_path / "certs" / certs.CA_CERT, tmp_path / "certs" / certs.CRL)
    app = create_app(service.coordinator, verifier, max_upload_bytes=MAX_UPLOAD, population=0, limits=limits)
    with live_server(app, tmp_path) as port:
        yield service, port


def upload_head(length: int | None = len(BODY)) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /v1/rounds/1/updates?version=0&num_samples=1 HTTP/1.1\r\nHost: fedlm\r\n"
            f"Content-Type: application/octet-stream\r\n{framing}\r\n\r\n").encode()


def open_as(tmp_path, port, name, timeout=5.0):
    return connect(port, client_context(tmp_path, name), timeout=timeout)


def closes_while_dripping(sock, drip: bytes, every: float, within: float) -> float | None:
    """Send `drip` every `every` seconds until the server closes the connection; seconds it took, or None."""
    started = time.monotonic()
    sock.settimeout(0)  # read only what is there: TLS 1.3 session tickets make the socket readable with nothing to return
    while time.monotonic() - started < within:
        try:
            sock.sendall(drip)
        except OSError:
            return time.monotonic() - started
        readable, _, _ = select.select([sock], [], [], every)
        try:
            if readable and not sock.recv(65536):
                return time.monotonic() - started
        except ssl.SSLWantReadError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def accepted(service) -> list[str]:
    with service.coordinator.store.session() as session:
        return [row.client_id for row in db.accepted_updates(session, 1)]


def staged_files(service) -> list:
    return list((service.root / "blobs" / "staging").iterdir())


def test_a_request_head_dripped_byte_by_byte_is_cut_off_without_a_certificate(tmp_path):
    with serving(tmp_path, FAST) as (service, port):
        # Prepare: no certificate, a request line, then one header byte every 0.1 s.
        sock = open_as(tmp_path, port, None)
        sock.sendall(b"GET /v1/health HTTP/1.1\r\n")
        # Execute
        took = closes_while_dripping(sock, b"X", every=0.1, within=4.0)
        # Assert: closed at the head deadline (0.5 s), not held while bytes trickle in.
        assert took is not None and took < 3.0
        # A request that comes in time is answered, and the connection serves another.
        sock = open_as(tmp_path, port, None)
        for _ in range(2):
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: fedlm\r\n\r\n")
            assert read_response(sock) == (200, b'{"status":"ok"}')
            time.sleep(0.2)


def test_a_stalled_upload_body_gets_408_and_nothing_is_kept(tmp_path):
    with serving(tmp_path, FAST) as (service, port):
        # Prepare: alice declares 40 bytes, sends 10 and stops.
        sock = open_as(tmp_path, port, "alice", timeout=4.0)
        sock.sendall(upload_head() + BODY[:10])
        # Execute
        started = time.monotonic()
        status, body = read_response(sock)
        # Assert: refused at the read deadline; nothing staged or folded; the connection is closed.
        assert (status, b"request_timeout" in body, b"read_timeout_seconds" in body) == (408, True, True)
        assert time.monotonic() - started < 3.0
        assert sock.recv(100) == b""
        assert staged_files(service) == [] and service.coordinator.rnd.weights == {}
        # The refusal took nothing from alice: her whole upload is accepted afterwards.
        sock = open_as(tmp_path, port, "alice")
        sock.sendall(upload_head() + BODY)
        assert read_response(sock)[0] == 200 and set(service.coordinator.rnd.weights) == {"alice"}


def test_a_body_dripped_under_the_read_deadline_is_cut_off_at_max_body_seconds(tmp_path):
    limits = RequestLimits(read_timeout_seconds=0.5, max_body_seconds=1.0, max_staging_bytes=2**20)
    with serving(tmp_path, limits) as (service, port):
        # Prepare: a declared 4,000 bytes, one every 0.2 s: each read is in time, the whole never is.
        sock = open_as(tmp_path, port, "alice", timeout=4.0)
        sock.sendall(upload_head(4000))
        # Execute
        took = closes_while_dripping(sock, b"\x00", every=0.2, within=4.0)
        # Assert
        assert took is not None and 0.8 < took < 3.0
        assert staged_files(service) == [] and service.coordinator.rnd.weights == {}


def test_a_second_concurrent_upload_from_one_client_gets_429_before_its_body_is_read(tmp_path):
    with serving(tmp_path, PATIENT) as (service, port):
        # Prepare: alice's first upload is half sent and held.
        first = open_as(tmp_path, port, "alice")
        first.sendall(upload_head() + BODY[:20])
        time.sleep(0.3)
        # Execute: a second one from alice (headers only), and bob's upload meanwhile.
        second = open_as(tmp_path, port, "alice")
        second.sendall(upload_head())
        status, body = read_response(second)
        bob = open_as(tmp_path, port, "bob")
        bob.sendall(upload_head() + BODY)
        # Assert: alice's second is refused with a code saying why; bob is not held up by her.
        assert (status, b"upload_in_progress" in body) == (429, True)
        assert read_response(bob)[0] == 200
        # The first one, finished, is accepted: the refusal changed nothing of it.
        first.sendall(BODY[20:])
        assert read_response(first)[0] == 200 and accepted(service) == ["bob", "alice"]


def test_uploads_past_the_staging_space_get_507_before_their_body_is_read(tmp_path):
    limits = RequestLimits(read_timeout_seconds=10.0, max_body_seconds=20.0, max_staging_bytes=60)
    with serving(tmp_path, limits, names=("alice", "bob", "carol")) as (service, port):
        # Prepare: alice holds 40 of the 60 staging bytes with an upload half sent.
        held = open_as(tmp_path, port, "alice")
        held.sendall(upload_head() + BODY[:20])
        time.sleep(0.3)
        # Execute: bob declares 40 more (headers only); carol sends hers without a length, 16 then 24 bytes.
        bob = open_as(tmp_path, port, "bob")
        bob.sendall(upload_head())
        bob_answer = read_response(bob)
        carol = open_as(tmp_path, port, "carol")
        carol.sendall(upload_head(None) + b"10\r\n" + BODY[:16] + b"\r\n")
        time.sleep(0.3)
        carol.sendall(b"18\r\n" + BODY[16:] + b"\r\n0\r\n\r\n")
        carol_answer = read_response(carol)
        # Assert: both refused as staging_full; only alice's half-sent file is staged.
        assert (bob_answer[0], b"staging_full" in bob_answer[1]) == (507, True)
        assert (carol_answer[0], b"staging_full" in carol_answer[1]) == (507, True)
        assert len(staged_files(service)) == 1 and service.coordinator.rnd.weights == {}
        # Once alice's upload is in, the space is free again.
        held.sendall(BODY[20:])
        assert read_response(held)[0] == 200
        bob = open_as(tmp_path, port, "bob")
        bob.sendall(upload_head() + BODY)
        assert read_response(bob)[0] == 200 and set(service.coordinator.rnd.weights) == {"alice", "bob"}


@pytest.mark.parametrize("name", [None, "alice"])
def test_a_json_body_past_the_message_limit_is_refused_before_it_is_read(tmp_path, name):
    with serving(tmp_path, PATIENT) as (service, port):
        # Prepare / Execute: 9 MiB declared for a route that takes a few bytes of JSON; nothing sent after the head.
        sock = open_as(tmp_path, port, name)
        sock.sendall(b"POST /v1/clients/register HTTP/1.1\r\nHost: fedlm\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 9437184\r\n\r\n{")
        status, body = read_response(sock)
        # Assert: refused at once, and the connection is closed rather than left to drain 9 MiB.
        assert (status, b"too_large" in body) == (413, True)
        assert sock.recv(100) == b""


def test_a_stalled_json_body_gets_408_before_any_certificate_check(tmp_path):
    with serving(tmp_path, FAST) as (service, port):
        # Prepare: no certificate; 100 bytes of JSON declared, 10 sent.
        sock = open_as(tmp_path, port, None, timeout=4.0)
        sock.sendall(b"POST /v1/clients/register HTTP/1.1\r\nHost: fedlm\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n" + b'{"region":')
        # Execute
        status, body = read_response(sock)
        # Assert: the body's deadline applies before anything else; the connection is closed.
        assert (status, b"request_timeout" in body) == (408, True)
        assert sock.recv(100) == b""


def test_the_limits_come_from_server_toml_and_bad_values_are_refused_naming_the_key():
    server = settings_from_dict({"server": {"read_timeout_seconds": 3, "max_body_seconds": 30,
                                            "max_staging_bytes": 2**27}}).server
    assert RequestLimits.of(server) == RequestLimits(3.0, 30.0, 2**27)
    assert RequestLimits.of(ServerSection()) == RequestLimits(10.0, 600.0, 2**30)
    for values, key in [({"read_timeout_seconds": 0}, "server.read_timeout_seconds"),
                        ({"read_timeout_seconds": 20, "max_body_seconds": 10}, "server.max_body_seconds"),
                        ({"max_staging_bytes": 2**20}, "server.max_staging_bytes")]:  # below max_upload_bytes
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            settings_from_dict({"server": values})


def test_serve_applies_the_request_limits_of_server_toml(tmp_path):
    from fedlm.service.runtime import build_runtime
    from fedlm.service.settings import load_settings

    certs.init_ca(tmp_path / "certs")
    (tmp_path / "run.toml").write_text('[model]\nname = "tiny"\n')
    (tmp_path / "server.toml").write_text('[server]\ndata_dir = "state"\nrun_config = "run.toml"\nread_timeout_seconds = 3\n'
                                          "max_body_seconds = 30\nmax_staging_bytes = 134217728\n")
    runtime = build_runtime(load_settings(tmp_path / "server.toml"))
    try:
        assert runtime.app.state.limits == RequestLimits(3.0, 30.0, 134217728)
    finally:
        runtime.lock.release()
        runtime.coordinator.store.dispose()
