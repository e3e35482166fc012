"""The real app under the real uvicorn (mutual TLS on loopback, `runtime.uvicorn_config`), in a thread of the test.

For what only a socket shows: slow and cut-off requests, TLS handshakes, the log lines uvicorn writes.
Clients here speak raw HTTP/1.1 over an `ssl` socket, so a test can send half a request and stop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedlm.service import certs
from fedlm.service.runtime import uvicorn_config
from fedlm.service.settings import ServerSection, ServiceSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(app, root: Path) -> Iterator[int]:
    """Serve `app` with TLS material from root/certs (as `fedlm certs init` writes it); yields the port."""
    port = free_port()
    settings = ServiceSettings(server=ServerSection(port=port), root=root)
    server = uvicorn.Server(uvicorn_config(SimpleNamespace(settings=settings, app=app)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = server.force_exit = True  # the tests' held connections need no grace period
        thread.join(10)


def client_context(root: Path, name: str | None) -> ssl.SSLContext:
    """A client's TLS context: trusts the test CA, presents `name`'s certificate (none for None)."""
    context = ssl.create_default_context(cafile=str(root / "certs" / certs.CA_CERT))
    if name is not None:
        folder = root / "certs" / "clients"
        context.load_cert_chain(str(folder / f"{name}.pem"), str(folder / f"{name}.key"))
    return context


def connect(port: int, context: ssl.SSLContext, timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return context.wrap_socket(raw, server_hostname="localhost")


def read_response(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """Status and the raw rest of one response (read until the server closes or a whole body came)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0, body


def is_closed_by_server(sock: ssl.SSLSocket, within: float) -> bool:
    """Whether the server closes `sock` within `within` seconds (reads and drops whatever comes first)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except (TimeoutError, socket.timeout):
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        return True


def issue_expired(folder: Path, name: str) -> tuple[Path, Path]:
    """A client certificate from the CA in `folder` that expired yesterday, written to folder/clients/NAME.pem/.key."""
    ca = x509.load_pem_x509_certificate((folder / certs.CA_CERT).read_bytes())
    ca_key = serialization.load_pem_private_key((folder / certs.CA_KEY).read_bytes(), password=None)
    key, now = ec.generate_private_key(ec.SECP256R1()), dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now - dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    out = folder / "clients"
    out.mkdir(exist_ok=True)
    (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return out / f"{name}.pem", out / f"{name}.key"
