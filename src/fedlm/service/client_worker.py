"""The client's only I/O loop (`fedlm join`): check in, train on local text, encode, upload; repeat.

Under secure aggregation a task carries the round's SecAgg parameters and the worker runs
the protocol's stages with the coordinator (service.secagg_worker) around its training.

Talks to the coordinator over HTTPS with its client certificate (mTLS). Transport errors
and 5xx answers are retried with capped exponential backoff and jitter, so the worker
rides out a coordinator restart; an upload whose answer was lost is recognised by the
server's `already_answered` refusal on the retry. The global adapter is downloaded by
version and its SHA-256 checked against the task. Logs carry ids, sizes and hashes only:
no client text and no update contents leave this process except the encoded update.

The upload is the encoder's wire payload when the run compresses (quantized codes, sparse
values, top-k indices; see service.local_trainer), else the dense float32 vector; either
way the `bytes_up` metric sent with it is the length of that body.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedlm.service.scheduling import Traits
from fedlm.service.secagg_worker import take_part_securely
from fedlm.service.transport import CertificateProblem, Connection, JoinSettings, ServerRefused

__all__ = ["CertificateProblem", "Connection", "JoinSettings", "ServerRefused", "join", "take_part"]

log = logging.getLogger("fedlm.join")
# refusals a worker moves on from to its next task: our earlier try landed, we were late for a synchronous round, or
# (FedBuff) our update was past the run's maximum staleness or our task expired
MOVE_ON = ("already_answered", "round_not_open", "too_stale", "task_expired")
# trains on a task from the global vector: (task, global) -> (update, samples, metrics); the update is the float32
# vector after the client steps, or, when the run compresses (never under SecAgg), the wire payload to upload
Trainer = Callable[[dict[str, Any], np.ndarray], tuple[np.ndarray | bytes, int, dict[str, float]]]


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
        if err.code in MOVE_ON:
            return err.code
        raise


def join(settings: JoinSettings) -> int:
    """Take part until the coordinator says the run is finished; returns the number of updates sent.

    Says what it is doing while it starts (connecting, registered, loading the model: tens of seconds)."""
    from fedlm.service.local_trainer import LocalTrainer

    log.info("connecting to %s with certificate %s", settings.server, settings.cert)
    conn = Connection(settings)
    try:
        me = conn.request("POST", "/v1/clients/register", json=settings.traits.__dict__).json()["client_id"]
        config = conn.request("GET", "/v1/config").json()
        model = config.get("run", {}).get("model", {}).get("name", "?")
        log.info("registered as client %s; loading the model (%s) and this client's data, which can take a minute", me, model)
        started = time.monotonic()
        trainer = LocalTrainer.build(config, Path(settings.data), client_id=me, threads=settings.threads,
                                     device=settings.device, encoding=settings.encoding)
        log.info("ready in %.0f s; waiting for a task (the server opens a round once enough clients are here)",
                 time.monotonic() - started)
        return take_part(conn, me, trainer.train, settings.traits)
    finally:
        conn.close()


def take_part(conn: Connection, me: str, train: Trainer, traits: Traits) -> int:
    """Ask for tasks and answer them until the run is finished; returns the number of updates that counted."""
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
        update, num_samples, metrics = train(task, global_vector)
        payload = update if isinstance(update, bytes) else wire.serialize_dense(update)
        outcome = upload(conn, task, payload, num_samples, {**metrics, "bytes_up": float(len(payload))})
        sent += outcome in ("accepted", "already_answered")
        log.info("client %s round %d: %s (%d bytes)", me, task["round"], outcome, len(payload))
