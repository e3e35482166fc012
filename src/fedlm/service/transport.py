"""The client's transport to the coordinator: one HTTPS connection under mutual TLS, retries, refusals.

Both client workers (the plain one, service.client_worker, and the SecAgg one,
service.secagg_worker) talk through this module, so neither imports the other's loop.
Transport errors, 5xx answers, 408 (too slow) and 429 (an earlier try of the same upload is
still being received) are retried with capped exponential backoff and full jitter, so a
worker rides out a coordinator restart; other 4xx answers raise ServerRefused with the
server's error code.

A certificate problem is not retried: it stops the worker at once with a message naming
the certificate and the fix (CertificateProblem). The client's own certificate is checked
before the first connection (its validity dates); a server certificate this client does not
trust fails the handshake here; a client certificate the server does not accept makes the
server hang up right after the handshake without a word (TLS 1.3 leaves no alert to read),
so that is diagnosed from what the client knows: its certificate's dates and issuer.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from fedlm.service.scheduling import Traits

log = logging.getLogger("fedlm.join")


RETRIED_4XX = (408, 429)  # too slow / an earlier try still being received: the same request may succeed later
HUNG_UP = "Server disconnected without sending a response"  # httpx's words for a connection closed unanswered


class ServerRefused(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"server refused ({status}): {body.get('error')}: {body.get('detail')}")
        self.status, self.code = status, body.get("error", "")


class CertificateProblem(RuntimeError):
    """A certificate is why the server cannot be reached: retrying would not help."""


@dataclass(frozen=True)
class JoinSettings:
    server: str
    data: Path
    cert: Path
    key: Path
    ca: Path
    traits: Traits = field(default_factory=Traits)
    backoff_initial: float = 0.2  # seconds before the first retry; doubles up to backoff_max
    backoff_max: float = 5.0
    give_up_after: float = 300.0  # seconds of consecutive failures before the worker stops
    threads: int = 1  # torch threads for local training
    device: str = ""  # model.device on this client ("" keeps the run's, which defaults to "auto")
    encoding: str = ""  # data.encoding of this client's files ("" keeps the run's, which defaults to "utf-8")
    crl: Path | None = None  # the federation's revocation list: SecAgg neighbours' certificates are checked against it


def backoff_delays(initial: float, cap: float, rng: random.Random) -> Callable[[int], float]:
    """Delay before retry `attempt` (0-based): full jitter over min(cap, initial * 2^attempt)."""
    return lambda attempt: rng.uniform(0, min(cap, initial * 2**attempt))


def renew_hint(cert_path: Path) -> str:
    return (f"ask the federation's operator for a new one (`fedlm certs issue {cert_path.stem} --dir <CA folder>` on "
            "the server) and pass it with --cert and --key")


def own_certificate_problem(cert: x509.Certificate, cert_path: Path, now: dt.datetime) -> str | None:
    """Why this client's own certificate cannot work (outside its validity dates), or None."""
    if now > cert.not_valid_after_utc:
        return f"this client's certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; {renew_hint(cert_path)}"
    if now < cert.not_valid_before_utc:
        return (f"this client's certificate {cert_path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
                "(check this machine's clock)")
    return None


def is_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except Exception:  # ValueError, TypeError, InvalidSignature: none has a common base
        return False


def _causes(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def certificate_problem(err: httpx.TransportError, settings: JoinSettings) -> str | None:
    """The certificate problem behind a transport error, as a message saying which and how to fix it; None if none."""
    for cause in _causes(err):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (f"this client does not trust the server's certificate ({cause.verify_message}): --ca {settings.ca} "
                    "must be the CA that signed the server's certificate (the server's certs/ca.pem)")
        if isinstance(cause, ssl.SSLError) and "ALERT" in (cause.reason or ""):
            alert = cause.reason.lower().replace("_", " ")
            return f"the server refused this client's certificate {settings.cert} ({alert}); {renew_hint(Path(settings.cert))}"
    if HUNG_UP not in str(err):
        return None
    cert = x509.load_pem_x509_certificate(Path(settings.cert).read_bytes())
    ca = x509.load_pem_x509_certificate(Path(settings.ca).read_bytes())
    own = own_certificate_problem(cert, Path(settings.cert), dt.datetime.now(dt.timezone.utc))
    if own is not None:
        return f"the server hung up after the TLS handshake: {own}"
    if not is_issued_by(cert, ca):
        return (f"the server hung up after the TLS handshake: this client's certificate {settings.cert} was not issued by "
                f"the CA in --ca {settings.ca}, so the server does not accept it; {renew_hint(Path(settings.cert))}")
    return None


def make_tls_context(settings: JoinSettings) -> ssl.SSLContext:
    """The client's TLS context, once its own certificate is loaded and within its dates (else CertificateProblem)."""
    try:
        context = ssl.create_default_context(cafile=str(settings.ca))
        context.load_cert_chain(str(settings.cert), str(settings.key))
        cert = x509.load_pem_x509_certificate(Path(settings.cert).read_bytes())
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError: a key that does not match, a file that is no PEM
        raise CertificateProblem(f"cannot load --cert {settings.cert}, --key {settings.key} and --ca {settings.ca}: "
                                 f"{err}") from None
    problem = own_certificate_problem(cert, Path(settings.cert), dt.datetime.now(dt.timezone.utc))
    if problem is not None:
        raise CertificateProblem(problem)
    return context


class Connection:
    """HTTPS to the coordinator with retries: transport errors, 5xx, 408 and 429 retry, other 4xx raise.

    `settings.server` may list several replicas' URLs, comma-separated (server.replica = true): a
    transport error moves the connection on to the next one, so a client rides out the death of
    the replica it was talking to."""

    def __init__(self, settings: JoinSettings) -> None:
        self.servers = tuple(url.strip() for url in settings.server.split(",") if url.strip())
        self.tls, self.current = make_tls_context(settings), 0
        self.http = httpx.Client(base_url=self.servers[0], verify=self.tls, timeout=60.0)
        self.settings = settings
        self.delay = backoff_delays(settings.backoff_initial, settings.backoff_max, random.Random())

    def next_server(self) -> None:
        """Move on to the next replica's URL (after a transport error); nothing with one URL."""
        servers = getattr(self, "servers", ())
        if len(servers) < 2:
            return
        self.http.close()
        self.current = (self.current + 1) % len(servers)
        self.http = httpx.Client(base_url=servers[self.current], verify=self.tls, timeout=60.0)
        log.info("trying the next coordinator replica, %s", servers[self.current])

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        started, attempt = time.monotonic(), 0
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
                if response.status_code < 500 and response.status_code not in RETRIED_4XX:
                    if response.status_code >= 400:
                        raise ServerRefused(response.status_code, _json_or_empty(response))
                    return response
                reason = f"HTTP {response.status_code} {_json_or_empty(response).get('error', '')}".rstrip()
                if response.status_code >= 500:  # this replica cannot serve (its database, its disk): try another
                    self.next_server()
            except httpx.TransportError as err:
                problem = certificate_problem(err, self.settings)
                if problem is not None:
                    raise CertificateProblem(problem) from None
                reason = type(err).__name__
                if HUNG_UP in str(err):
                    reason += ": the server closed the connection unanswered; if this goes on, it may not accept this client's certificate"
                self.next_server()
            if time.monotonic() - started > self.settings.give_up_after:
                raise RuntimeError(f"server unreachable for {self.settings.give_up_after:.0f} s ({reason})")
            wait = self.delay(attempt)
            log.info("retrying %s %s in %.2f s (%s)", method, path, wait, reason)
            time.sleep(wait)
            attempt += 1

    def close(self) -> None:
        self.http.close()


def _json_or_empty(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}
