"""The client's transport to the coordinator: one HTTPS connection under mutual TLS, retries, refusals.

Both client workers (the plain one, service.client_worker, and the SecAgg one,
service.secagg_worker) talk through this module, so neither imports the other's loop.
Transport errors and 5xx answers are retried with capped exponential backoff and full
jitter, so a worker rides out a coordinator restart; other 4xx answers raise
ServerRefused with the server's error code.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fedlm.service.scheduling import Traits

log = logging.getLogger("fedlm.join")


class ServerRefused(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"server refused ({status}): {body.get('error')}: {body.get('detail')}")
        self.status, self.code = status, body.get("error", "")


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


def backoff_delays(initial: float, cap: float, rng: random.Random) -> Callable[[int], float]:
    """Delay before retry `attempt` (0-based): full jitter over min(cap, initial * 2^attempt)."""
    return lambda attempt: rng.uniform(0, min(cap, initial * 2**attempt))


class Connection:
    """HTTPS to the coordinator with retries: transport errors and 5xx retry, other 4xx raise."""

    def __init__(self, settings: JoinSettings) -> None:
        context = ssl.create_default_context(cafile=str(settings.ca))
        context.load_cert_chain(str(settings.cert), str(settings.key))
        self.http = httpx.Client(base_url=settings.server, verify=context, timeout=60.0)
        self.settings = settings
        self.delay = backoff_delays(settings.backoff_initial, settings.backoff_max, random.Random())

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        started, attempt = time.monotonic(), 0
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
                if response.status_code < 500:
                    if response.status_code >= 400:
                        raise ServerRefused(response.status_code, _json_or_empty(response))
                    return response
                reason = f"HTTP {response.status_code}"
            except httpx.TransportError as err:
                reason = type(err).__name__
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
