"""Assemble a running coordinator from server.toml: model, pipeline, store, blobs, verifier, app, uvicorn.

The server loads the base model once, for the initial adapter (global version 0), the
update layout, exports and the canary gate's held-out evaluation; clients load their own.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from fedlm.config import ConfigError, RunConfig
from fedlm.service.app import create_app
from fedlm.service.blobs import BlobStore
from fedlm.service.certs import ClientVerifier
from fedlm.service.coordinator import Coordinator
from fedlm.service.replica import ReplicaCoordinator
from fedlm.service.instance_lock import InstanceLock, hold_instance
from fedlm.service.limits import describe_limits
from fedlm.service.registry import make_evaluator
from fedlm.service.request_guard import RequestLimits
from fedlm.service.settings import ServiceSettings
from fedlm.service.store import Store
from fedlm.service.tls import MutualTlsH11Protocol

log = logging.getLogger("fedlm.service")


@dataclass
class Runtime:
    settings: ServiceSettings
    run: RunConfig
    coordinator: Coordinator
    app: Any
    lock: InstanceLock  # held for the process's life: one coordinator per data directory and database


def population_of(settings: ServiceSettings, run: RunConfig) -> int:
    """The population the DP accountant assumes; without DP only a display value."""
    population = settings.scheduling.population
    if run.privacy.enabled and population < run.federation.clients_per_round:
        raise ConfigError("scheduling.population: must be set (>= federation.clients_per_round) with differential privacy")
    return population or run.federation.clients_per_round


def make_blob_store(settings: ServiceSettings, staging: str) -> BlobStore:
    """The data directory's blob store, or the object store server.blob_url names (with a local cache)."""
    if not settings.server.blob_url:
        return BlobStore(settings.data_dir / "blobs", staging)
    from fedlm.service.object_blobs import ObjectBlobStore

    return ObjectBlobStore(settings.data_dir / "blobs", settings.server.blob_url, endpoint=settings.server.blob_endpoint,
                           staging=staging)


def build_runtime(settings: ServiceSettings) -> Runtime:
    """The coordinator, once it holds its data directory and database (a second `fedlm serve` is refused first)."""
    from fedlm.assembly import assemble

    run = settings.run_config()
    log.info("%s (server.toml [limits]; see docs/service.md to lift them)", describe_limits(run))
    population = population_of(settings, run)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.database_url)
    replica = settings.server.replica
    lock = hold_instance(settings.data_dir, store.engine, settings.database_url, replica=replica)
    try:
        parts = assemble(run, population=population)
        evaluator = None
        if settings.registry.eval_data:
            evaluator = make_evaluator(parts, settings.path(settings.registry.eval_data),
                                       max_sequences=settings.registry.eval_max_sequences)
        # each replica stages in its own folder (named by its host and port) of the shared blob store
        staging = f"staging-{socket.gethostname()}-{settings.server.port}" if replica else "staging"
        blobs = make_blob_store(settings, staging)
        blobs.clear_staging()  # only now: the lock says no other coordinator is mid-upload in this folder
        coordinator = (ReplicaCoordinator if replica else Coordinator)(
            store, blobs, run=run, pipeline=parts.pipeline, initial_global=parts.adapter.initial_shared,
            scheduling=settings.scheduling, registry=settings.registry, evaluator=evaluator, secagg=settings.secagg,
        )
        crl = settings.path(settings.tls.crl) if settings.tls.crl else None
        verifier = ClientVerifier(settings.path(settings.tls.ca), crl)
        app = create_app(coordinator, verifier, max_upload_bytes=settings.server.max_upload_bytes, population=population,
                         tick_seconds=settings.server.tick_seconds, limits=RequestLimits.of(settings.server),
                         operators=tuple(settings.server.operators))
    except BaseException:
        lock.release()
        store.dispose()
        raise
    return Runtime(settings, run, coordinator, app, lock)


KEEP_ALIVE_SECONDS = 60


def uvicorn_config(runtime: Runtime) -> Any:
    """uvicorn under mutual TLS. The handshake asks for a client certificate and refuses one that does
    not chain to the CA; a request that brings none reaches the app, which refuses it with a 401 and a
    message saying what is missing (a handshake failure would tell the user nothing)."""
    import uvicorn

    tls = runtime.settings.tls
    path = runtime.settings.path
    return uvicorn.Config(
        runtime.app, host=runtime.settings.server.host, port=runtime.settings.server.port,
        ssl_certfile=str(path(tls.cert)), ssl_keyfile=str(path(tls.key)), ssl_ca_certs=str(path(tls.ca)),
        ssl_cert_reqs=ssl.CERT_OPTIONAL, http=MutualTlsH11Protocol, log_level="warning", access_log=False,
        timeout_graceful_shutdown=2, log_config=None,  # uvicorn's own lines go to the root handler (server.log_format)
        # uvicorn's default (5 s from the response's last write) closed connections of clients still reading a large
        # global: with 1,000 clients a third of the uploads that followed failed once and were retried
        # (benchmarks/service_load.py); an idle connection costs a socket, and the request guard still times out heads
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
