"""Light protocol clients for load tests: what `fedlm join` speaks to the coordinator, without the training.

Each client has its own certificate and one kept-alive HTTPS connection (an httpx AsyncClient),
and runs service.client_worker.take_part's loop: register; poll POST /v1/tasks/next, sleeping
the server's retry_after when there is no task; download the global version; upload an update;
again until the server says the run is finished. Requests are retried as service.transport
retries them (transport errors, 5xx, 408, 429; capped exponential backoff with full jitter),
and every retry is counted by cause and route. The body streams in 64 KiB pieces with its
Content-Length, so the generator never holds a whole encrypted body per connection.
The downloaded global's length is checked; its SHA-256 is left to real clients, so the
generator's CPU goes to making load. With several servers (replicas), client i talks to
server i mod n only, and its accepted uploads and their latencies are also counted per server.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlm.service.transport import RETRIED_4XX, backoff_delays

from service_harness import client_context

CHUNK = 64 * 1024
MOVE_ON = ("already_answered", "round_not_open")  # refusals a worker moves on from (service.client_worker.upload)


@dataclass
class Tally:
    """What the clients of one configuration saw."""

    upload_s: list[float] = field(default_factory=list)
    poll_s: list[float] = field(default_factory=list)
    download_s: list[float] = field(default_factory=list)
    retried: Counter = field(default_factory=Counter)  # "ReadError on POST /v1/rounds/{n}/updates": count
    refused: Counter = field(default_factory=Counter)  # 4xx answers that ended a request
    accepted: Counter = field(default_factory=Counter)  # round -> updates accepted
    round_end: dict[int, float] = field(default_factory=dict)  # round -> when its last accepted upload returned
    accepted_at: Counter = field(default_factory=Counter)  # server port -> updates accepted there
    upload_s_at: dict[int, list[float]] = field(default_factory=dict)  # server port -> its upload latencies
    failures: list[str] = field(default_factory=list)  # clients that stopped on an error


def route_of(path: str) -> str:
    """The route template of a request path (numbers replaced), for counting retries by route."""
    return "/".join("{n}" if part.isdigit() else part for part in path.split("/"))


def error_code(response: Any) -> str:
    try:
        return str(response.json().get("error", ""))
    except ValueError:
        return ""


class LightClient:
    """One client's connection; `request` retries like service.transport.Connection and returns any other answer."""

    def __init__(self, http: Any, tally: Tally, give_up_after: float = 300.0, server: int = 0) -> None:
        self.http, self.tally, self.give_up_after, self.server = http, tally, give_up_after, server
        self.delay = backoff_delays(0.2, 5.0, random.Random())

    async def request(self, method: str, path: str, *, content: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        import httpx

        started, attempt = time.monotonic(), 0
        while True:
            try:
                response = await self.http.request(method, path, content=content() if content else None, **kwargs)
                if response.status_code < 500 and response.status_code not in RETRIED_4XX:
                    return response
                reason = f"HTTP {response.status_code} {error_code(response)}".rstrip()
            except httpx.TransportError as err:
                reason = type(err).__name__
            self.tally.retried[f"{reason} on {method} {route_of(path)}"] += 1
            if time.monotonic() - started > self.give_up_after:
                raise RuntimeError(f"{method} {route_of(path)}: gave up after {self.give_up_after:.0f} s ({reason})")
            await asyncio.sleep(self.delay(attempt))
            attempt += 1


async def pieces(body: bytes) -> AsyncIterator[bytes]:
    view = memoryview(body)
    for start in range(0, len(body), CHUNK):
        yield bytes(view[start:start + CHUNK])


async def upload(client: LightClient, task: dict[str, Any], body: bytes) -> None:
    tally, started = client.tally, time.perf_counter()
    response = await client.request(
        "POST", f"/v1/rounds/{task['round']}/updates", content=lambda: pieces(body),
        params={"version": task["version"], "num_samples": 1},
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(body)),
                 "X-Fedlm-Metrics": json.dumps({"bytes_up": float(len(body))})})
    tally.upload_s.append(time.perf_counter() - started)
    tally.upload_s_at.setdefault(client.server, []).append(tally.upload_s[-1])
    if response.status_code == 200:
        tally.accepted[task["round"]] += 1
        tally.accepted_at[client.server] += 1
        tally.round_end[task["round"]] = max(tally.round_end.get(task["round"], 0.0), time.perf_counter())
        return
    code = error_code(response)
    tally.refused[f"upload {response.status_code} {code}"] += 1
    if code not in MOVE_ON:
        raise RuntimeError(f"upload refused: {response.status_code} {code}")


async def take_part(client: LightClient, body: bytes, global_bytes: int,
                    hold: Callable[[], Awaitable[None]] | None = None) -> int:
    """Register, then poll, download and upload until the run is finished; returns the last round answered.

    `hold` is awaited between the download and the upload (--memory: everyone uploads at once)."""
    tally, done = client.tally, 0
    (await client.request("POST", "/v1/clients/register", json={})).raise_for_status()
    while True:
        started = time.perf_counter()
        response = await client.request("POST", "/v1/tasks/next", json={})
        tally.poll_s.append(time.perf_counter() - started)
        response.raise_for_status()
        answer = response.json()
        task = answer["task"]
        if answer["finished"]:
            return done
        if task is None or task["round"] <= done:  # the bare baseline offers the open round again; the service does not
            await asyncio.sleep(answer["retry_after"])
            continue
        started = time.perf_counter()
        response = await client.request("GET", f"/v1/models/{task['version']}/global")
        tally.download_s.append(time.perf_counter() - started)
        if response.status_code != 200 or len(response.content) != global_bytes:
            raise RuntimeError(f"global v{task['version']}: {response.status_code}, {len(response.content)} bytes")
        if hold is not None:
            await hold()
        await upload(client, task, body)
        done = task["round"]


async def run_clients(root: Path, ports: list[int], names: list[str], body: bytes, *, global_bytes: int,
                      timeout: float, hold: Callable[[], Awaitable[None]] | None = None) -> tuple[Tally, float, bool]:
    """Every client's take_part at once, client i at ports[i % len(ports)]; (tally, start time, whether all finished
    within `timeout`)."""
    import httpx

    tally = Tally()
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    servers = [ports[i % len(ports)] for i in range(len(names))]
    sessions = [httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=client_context(root, n), limits=limits,
                                  timeout=httpx.Timeout(600.0)) for n, port in zip(names, servers, strict=True)]

    async def one(session: Any, server: int) -> None:
        try:
            await take_part(LightClient(session, tally, server=server), body, global_bytes, hold)
        except Exception as err:  # noqa: BLE001 - counted and reported: a client's stop is a finding, not a crash
            tally.failures.append(f"{type(err).__name__}: {err}"[:300])

    started = time.perf_counter()
    jobs = [asyncio.ensure_future(one(s, port)) for s, port in zip(sessions, servers, strict=True)]
    _, pending = await asyncio.wait(jobs, timeout=timeout)
    for job in pending:
        job.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await asyncio.gather(*(s.aclose() for s in sessions), return_exceptions=True)
    return tally, started, not pending
