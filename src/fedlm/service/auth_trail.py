"""A trail of refused authentications: a Prometheus count, a log line and an audit row for each, rate-limited.

Red-team finding 9 of the fleet issue: TLS handshake failures and 401/403 answers left no
trace. Each is now counted (`fedlm_auth_refused_total{reason}`), logged as one WARNING line
and written to the audit log as an `auth_refused` row. What is kept of a certificate is its
SHA-256 fingerprint and, when it is a well-formed client id, its CN; never anything else
from it. A failed handshake leaves no certificate to look at: its line has the TLS reason
(`certificate has expired`, `tlsv1 alert unknown ca`, ...) only.

A flood (a scanner, a fleet with a stale CA) must not fill the disk or the audit table: at
most `per_minute` refusals are logged and audited per minute; the rest are only counted,
and the next line written, or the next tick once the minute is over, says how many were left out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from fedlm.service import store as db
from fedlm.service.metrics import ServiceMetrics

log = logging.getLogger("fedlm.service")
PER_MINUTE = 20
WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Window:
    """One minute of the rate limit: refusals written so far and refusals left out."""

    started: float
    written: int = 0
    left_out: int = 0


def admit(window: Window, now: float, per_minute: int) -> tuple[Window, bool, int]:
    """(the window after this refusal, whether to write it, refusals of the minute before that its line reports)."""
    left_out = 0
    if now - window.started >= WINDOW_SECONDS:
        left_out, window = window.left_out, Window(now)
    if window.written >= per_minute:
        return replace(window, left_out=window.left_out + 1), False, left_out
    return replace(window, written=window.written + 1), True, left_out


class AuthTrail:
    """Counts, logs and audits refused authentications (see the module docstring)."""

    def __init__(self, store: db.Store, metrics: ServiceMetrics, *, per_minute: int = PER_MINUTE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.metrics, self.per_minute, self.clock = store, metrics, per_minute, clock
        self._window = Window(clock())
        self._lock = threading.Lock()
        self._queued: list[tuple[str, str | None, str | None]] = []  # audit rows from the event loop, written by flush

    def refused(self, reason: str, detail: str, *, client_id: str | None = None, fingerprint: str | None = None,
                queue: bool = False) -> None:
        """One refusal: `reason` is a fixed code (a label), `detail` fixed text naming where (never client input).

        With `queue` the audit row waits for the next `flush` (the tick thread) instead of being
        written now: the event loop must never wait on the database.
        """
        self.metrics.auth_refused.labels(reason).inc()
        with self._lock:
            self._window, write, left_out = admit(self._window, self.clock(), self.per_minute)
        if not write:
            return
        earlier = f" ({left_out} more in the minute before were not logged)" if left_out else ""
        who = f" client={client_id}" if client_id else ""
        cert = f" certificate sha256={fingerprint[:16]}" if fingerprint else ""
        log.warning("authentication refused (%s): %s%s%s%s", reason, detail, who, cert, earlier,
                    extra={"code": reason, "client_id": client_id, "fingerprint": fingerprint, "left_out": left_out})
        row = (f"{reason}: {detail}{earlier}", client_id, fingerprint)
        if queue:
            with self._lock:
                self._queued.append(row)
        else:
            self._audit(row[0], client_id=client_id, fingerprint=fingerprint)

    def handshake_refused(self, reason: str, detail: str) -> None:
        """A TLS handshake that failed (called from the event loop by service.tls; must never raise)."""
        try:
            self.refused(reason, f"TLS handshake failed: {detail}", queue=True)
        except Exception:  # a trail that cannot be written must not break the server's TLS layer
            log.exception("could not record a failed TLS handshake")

    def flush(self) -> None:
        """Write the queued audit rows, and report refusals left out in a minute that is over when none came
        since (called on each tick, off the event loop)."""
        with self._lock:
            queued, self._queued = self._queued, []
        for detail, client_id, fingerprint in queued:
            self._audit(detail, client_id=client_id, fingerprint=fingerprint)
        with self._lock:
            if not self._window.left_out or self.clock() - self._window.started < WINDOW_SECONDS:
                return
            left_out, self._window = self._window.left_out, Window(self.clock())
        log.warning("%d more authentication refusals in the last minute were not logged (see fedlm_auth_refused_total)",
                    left_out, extra={"left_out": left_out})
        self._audit(f"{left_out} more refusals in the minute before were not logged")

    def _audit(self, detail: str, *, client_id: str | None = None, fingerprint: str | None = None) -> None:
        try:
            with self.store.session() as session:
                db.audit(session, "auth_refused", client_id=client_id, sha256=fingerprint, detail=detail)
        except Exception as err:  # the database being down must not turn a 401 into a 500
            log.error("could not write the audit row of a refused authentication: %s", type(err).__name__)
