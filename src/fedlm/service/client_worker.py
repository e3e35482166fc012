"""The client's only I/O loop (`fedlm join`): check in, train on local text, encode, upload; repeat.

Under secure aggregation a task carries the round's SecAgg parameters and the worker runs
the protocol's stages with the coordinator (service.secagg_worker) around its training.

Talks to the coordinator over HTTPS with its client certificate (mTLS). Transport errors
and 5xx answers are retried with capped exponential backoff and jitter, so the worker
rides out a coordinator restart; an upload whose answer was lost is recognised by the
server's `already_answered` refusal on the retry. The global adapter is downloaded by
version and its SHA-256 checked against the task. Logs carry ids, sizes and hashes only:
no client text and no update contents leave this process except the encoded update.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from fedlm.service.scheduling import Traits

log = logging.getLogger("fedlm.join")
# trains on a task from the global vector: (task, global) -> (float32 update after the client steps, samples, metrics)
Trainer = Callable[[dict[str, Any], np.ndarray], tuple[np.ndarray, int, dict[str, float]]]


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


def read_client_texts(data: Path) -> list[str]:
    """The client's samples: a folder of .txt files, or fedlm's folder layout (every client's train part)."""
    from fedlm.data.folders import load_folder, read_txt_client

    if any(data.glob("*.txt")):
        return read_txt_client(data)
    return [text for client in load_folder(data).clients for text in client.train]


def download_global(conn: Connection, version: int, sha256: str) -> np.ndarray:
    from fedlm.updates import wire

    body = conn.request("GET", f"/v1/models/{version}/global").content
    digest = hashlib.sha256(body).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"global version {version} has SHA-256 {digest[:12]}..., the task says {sha256[:12]}...")
    kind, fields = wire.deserialize(body)
    if kind != "dense":
        raise RuntimeError(f"global version {version} is a {kind} payload, expected dense")
    return fields["vector"]


def upload(conn: Connection, task: dict[str, Any], payload: bytes, num_samples: int, metrics: dict[str, float]) -> str:
    """'accepted', or the server's refusal code when it is one a worker moves on from (late, replayed)."""
    try:
        conn.request("POST", f"/v1/rounds/{task['round']}/updates", content=payload,
                     params={"version": task["version"], "num_samples": num_samples},
                     headers={"X-Fedlm-Metrics": json.dumps(metrics), "Content-Type": "application/octet-stream"})
        return "accepted"
    except ServerRefused as err:
        if err.code in ("already_answered", "round_not_open"):  # our earlier try landed, or we were late
            return err.code
        raise


def join(settings: JoinSettings) -> int:
    """Take part until the coordinator says the run is finished; returns the number of updates sent."""
    from fedlm.service.local_trainer import LocalTrainer

    conn = Connection(settings)
    try:
        me = conn.request("POST", "/v1/clients/register", json=settings.traits.__dict__).json()["client_id"]
        config = conn.request("GET", "/v1/config").json()
        trainer = LocalTrainer.build(config, read_client_texts(Path(settings.data)), client_id=me, threads=settings.threads)
        return take_part(conn, me, trainer.train, settings.traits)
    finally:
        conn.close()


def take_part(conn: Connection, me: str, train: Trainer, traits: Traits) -> int:
    """Ask for tasks and answer them until the run is finished; returns the number of updates that counted."""
    from fedlm.service.secagg_worker import take_part_securely
    from fedlm.updates import wire

    sent = 0
    while True:
        answer = conn.request("POST", "/v1/tasks/next", json=traits.__dict__).json()
        if answer["finished"]:
            log.info("client %s: run finished after %d updates", me, sent)
            return sent
        task = answer["task"]
        if task is None:
            time.sleep(answer["retry_after"])
            continue
        global_vector = download_global(conn, task["version"], task["global_sha256"])
        if task.get("secagg") is not None:
            outcome = take_part_securely(conn, me, task, global_vector.size, lambda: train(task, global_vector))
            sent += outcome == "unmasked"
            log.info("client %s round %d: secure aggregation %s", me, task["round"], outcome)
            continue
        vector, num_samples, metrics = train(task, global_vector)
        payload = wire.serialize_dense(vector)
        outcome = upload(conn, task, payload, num_samples, metrics)
        sent += outcome in ("accepted", "already_answered")
        log.info("client %s round %d: %s (%d bytes)", me, task["round"], outcome, len(payload))
