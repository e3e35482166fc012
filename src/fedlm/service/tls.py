"""The TLS connection layer under uvicorn: the peer certificate for the app, a deadline on each request head,
and a record of every failed handshake.

uvicorn (0.54 here) verifies client certificates (ssl_cert_reqs=CERT_OPTIONAL,
ssl_ca_certs) but does not yet put them in the request scope (its tls-extension pull
requests are unmerged). This protocol subclass reads the peer certificate from the
connection's SSL object once the handshake is done and adds
scope["extensions"]["tls"]["client_cert_chain"] = [PEM] to every request on that
connection. The app reads only that key, so it works unchanged once uvicorn fills it.

uvicorn has no deadline on a request's head (its keep-alive timer starts only after a first
answer, and every byte that arrives stops it), so a client could hold a connection open by
sending its headers one byte at a time. This protocol closes a connection whose request head
is not complete within `read_timeout_seconds` of the connection opening or of the last
answer (service.request_guard has the limits on bodies).

A handshake that fails never reaches the protocol (asyncio drops the connection and logs
nothing outside debug mode), so the server's SSL context gets an SSLObject class that
reports the failure to the app's AuthTrail (service.auth_trail) before asyncio sees it.
The limits and the trail are read from the app uvicorn serves (`app.state`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from fedlm.service.settings import ServerSection

HandshakeReport = Callable[[str, str], None]  # (reason code, detail) of a failed handshake


def with_tls_extension(app: Any, tls: dict[str, Any]) -> Any:
    async def app_with_tls(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": tls}
        await app(scope, receive, send)

    return app_with_tls


def tls_info(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return {
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "tls_version": ssl_object.version(),
        "cipher_suite": (ssl_object.cipher() or (None,))[0],
    }


def handshake_failure(err: ssl.SSLError) -> tuple[str, str]:
    """(reason code, detail) of a failed server-side handshake; the detail is OpenSSL's fixed text, never peer data."""
    if isinstance(err, ssl.SSLCertVerificationError):  # the client's certificate: not from our CA, expired, ...
        return "tls_certificate_rejected", f"client certificate rejected: {err.verify_message}"
    reason = (err.reason or type(err).__name__).lower().replace("_", " ")
    if "alert" in reason:  # the client refused us (it does not trust our certificate) or aborted
        return "tls_peer_alert", f"the client sent {reason}"
    return "tls_handshake_failed", reason


def watch_handshakes(context: ssl.SSLContext, report: HandshakeReport) -> None:
    """Make every connection of `context` call `report` when its handshake fails (idempotent)."""
    if getattr(context.sslobject_class, "report", None) == report:
        return

    class WatchedSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as err:
                type(self).report(*handshake_failure(err))
                raise

    WatchedSSLObject.report = staticmethod(report)
    context.sslobject_class = WatchedSSLObject


class MutualTlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the peer certificate in each request's scope, a deadline on each request head,
    and failed handshakes reported to the app's AuthTrail."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        state = getattr(config.app, "state", None)  # the FastAPI app (create_app), not uvicorn's wrapping of it
        limits = getattr(state, "limits", None)
        self.head_timeout = limits.read_timeout_seconds if limits is not None else ServerSection.read_timeout_seconds
        self.head_timer: asyncio.TimerHandle | None = None
        trail = getattr(state, "auth_trail", None)
        if config.ssl is not None and trail is not None:  # before asyncio wraps this connection's socket
            watch_handshakes(config.ssl, trail.handshake_refused)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        info = tls_info(transport)
        if info is not None:
            self.app = with_tls_extension(self.app, info)
        self._arm_head_timer()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a whole request head came: the app's limits take over
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():  # first: a pipelined request waiting behind this answer disarms it again
            self._arm_head_timer()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing():
            self.transport.close()
