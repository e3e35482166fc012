"""Hand the TLS peer certificate to the app, as the ASGI TLS extension describes it.

uvicorn (0.54 here) verifies client certificates (ssl_cert_reqs=CERT_OPTIONAL,
ssl_ca_certs) but does not yet put them in the request scope (its tls-extension pull
requests are unmerged). This protocol subclass reads the peer certificate from the
connection's SSL object once the handshake is done and adds
scope["extensions"]["tls"]["client_cert_chain"] = [PEM] to every request on that
connection. The app reads only that key, so it works unchanged once uvicorn fills it.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


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


class MutualTlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the peer certificate in each request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        info = tls_info(transport)
        if info is not None:
            self.app = with_tls_extension(self.app, info)
