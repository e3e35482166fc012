"""How a request may arrive: in time, within its size, one upload per client at a time, within the staging space.

Red-team finding 6 of the fleet issue: with no read timeout, no per-client upload limit and no
cap on staging space, four held connections with a large Content-Length starved everyone else
on a small disk, and connections that dripped their headers stayed open as long as they liked.
The limits, from the outside in:

- the connection (service.tls): a request's head must be complete within
  `server.read_timeout_seconds` of the connection opening or of the last answer, else the
  connection is closed; it needs no certificate to try, so it needs none to be cut off;
- `RequestGuard`, an ASGI middleware over every route: each piece of a body must come within
  `read_timeout_seconds` of the last, and the whole body within `server.max_body_seconds`
  (408 `request_timeout`); a body past MAX_MESSAGE_BYTES on any route but the upload route is
  refused before it is read (413 `too_large`; the upload route has `server.max_upload_bytes`);
  an answer sent before the body was read closes the connection, so the rest cannot hold it;
- the upload route: `UploadSlots` lets a client have one upload being received at a time
  (429 `upload_in_progress`), and `StagingSpace` keeps the uploads being received within
  `server.max_staging_bytes` of disk together: a declared Content-Length is reserved before
  the body is read, a body without one is counted as it streams (507 `staging_full`).

Written here rather than taken from uvicorn: it offers a keep-alive timeout and a global
connection count, but no deadline on a request's head or body and no per-client limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from fedlm.service.errors import Refused
from fedlm.service.settings import ServerSection

MAX_MESSAGE_BYTES = 8 * 2**20  # JSON bodies: the largest SecAgg table (4,096 peers) is about 5 MB
UPLOAD_ROUTE = re.compile(r"/v1/rounds/[^/]+/updates")


@dataclass(frozen=True)
class RequestLimits:
    read_timeout_seconds: float  # a request's head, and each piece of its body, must come within this
    max_body_seconds: float  # a whole body must come within this
    max_staging_bytes: int  # uploads being received hold at most this much staging space together
    max_message_bytes: int = MAX_MESSAGE_BYTES  # body limit of every route but the upload route

    @classmethod
    def of(cls, server: ServerSection) -> RequestLimits:
        return cls(server.read_timeout_seconds, server.max_body_seconds, server.max_staging_bytes)


class BodyRefused(HTTPException):
    """A body that came too slowly or too large, raised from the guarded `receive`.

    An HTTPException, because FastAPI turns any other error raised while it parses a JSON body into a 400."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, message)
        self.code = code


def content_length(scope: dict[str, Any]) -> int | None:
    """The declared body length (h11 has already checked it is a number), or None without one."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            return int(value)
    return None


def expects_body(scope: dict[str, Any]) -> bool:
    chunked = any(name.lower() == b"transfer-encoding" for name, _ in scope.get("headers") or ())
    return chunked or (content_length(scope) or 0) > 0


def is_upload(scope: dict[str, Any]) -> bool:
    return scope.get("method") == "POST" and UPLOAD_ROUTE.fullmatch(scope.get("path", "")) is not None


class RequestGuard:
    """ASGI middleware: deadlines on every request body, a size limit on non-upload bodies, and
    `Connection: close` on an answer sent before the body was read."""

    def __init__(self, app: Any, *, limits: RequestLimits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits, loop = self.limits, asyncio.get_running_loop()
        size_limit = None if is_upload(scope) else limits.max_message_bytes
        declared = content_length(scope)
        if size_limit is not None and declared is not None and declared > size_limit:
            refusal = {"error": "too_large", "detail": f"request body exceeds the limit of {size_limit} bytes"}
            await JSONResponse(refusal, status_code=413, headers={"connection": "close"})(scope, receive, send)
            return
        pending = [expects_body(scope)]  # the body has not all been read yet
        deadline, received = loop.time() + limits.max_body_seconds, [0]

        async def guarded_receive() -> dict:
            if not pending[0]:  # after the body, receive only waits for a disconnect: no deadline
                return await receive()
            wait = min(limits.read_timeout_seconds, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
            except TimeoutError:
                which = (f"no part of the body came for server.read_timeout_seconds = {limits.read_timeout_seconds:g} s"
                         if wait == limits.read_timeout_seconds else
                         f"the body did not come within server.max_body_seconds = {limits.max_body_seconds:g} s")
                raise BodyRefused(408, "request_timeout", which) from None
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                pending[0] = bool(message.get("more_body", False))
                if size_limit is not None and received[0] > size_limit:
                    raise BodyRefused(413, "too_large", f"request body exceeds the limit of {size_limit} bytes")
            else:
                pending[0] = False
            return message

        async def guarded_send(message: dict) -> None:
            if message["type"] == "http.response.start" and pending[0]:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)


class UploadSlots:
    """The clients with an upload being received: one each at a time."""

    def __init__(self) -> None:
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, client_id: str) -> Iterator[None]:
        with self._lock:
            if client_id in self._busy:
                raise Refused(429, "upload_in_progress", f"client {client_id} already has an upload being received; "
                              "send one at a time")
            self._busy.add(client_id)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(client_id)


@dataclass
class Reservation:
    held: int  # staging bytes set aside for this upload
    used: int = 0  # body bytes received so far


class StagingSpace:
    """Staging bytes set aside for the uploads being received, against `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.held = capacity, 0
        self._lock = threading.Lock()

    def _take(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.capacity:
                return False
            self.held += size
            return True

    def _full(self) -> Refused:
        return Refused(507, "staging_full", f"the server's staging space for uploads (server.max_staging_bytes = "
                       f"{self.capacity}) is taken by uploads being received; try again later")

    @contextlib.contextmanager
    def reserve(self, declared: int | None) -> Iterator[Reservation]:
        """Set aside `declared` bytes (0 without a Content-Length) before the body is read, or refuse (507)."""
        if not self._take(declared or 0):
            raise self._full()
        reservation = Reservation(declared or 0)
        try:
            yield reservation
        finally:
            with self._lock:
                self.held -= reservation.held

    async def counted(self, chunks: AsyncIterator[bytes], reservation: Reservation) -> AsyncIterator[bytes]:
        """`chunks`, taking more space as a body without (or past) its declared length streams in."""
        async for chunk in chunks:
            reservation.used += len(chunk)
            if reservation.used > reservation.held:
                if not self._take(reservation.used - reservation.held):
                    raise self._full()
                reservation.held = reservation.used
            yield chunk
