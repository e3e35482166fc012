"""The coordinator's HTTP API (FastAPI): routes only; the coordinator holds the logic.

Versioned under /v1; the SecAgg stages are in service.secagg_routes. The caller's identity is the CN of its TLS client certificate,
read from the ASGI TLS extension (see service.tls) and checked by `ClientVerifier`.
Every refusal is a 4xx with a JSON body {"error": code, "detail": message} (5xx only for the server's own
state: a damaged blob, an unusable CRL, no staging space left). How a request may arrive (deadlines, sizes,
one upload per client at a time) is in service.request_guard; refused authentications are counted, logged
and audited by service.auth_trail. Every route but /v1/health, /openapi.json included, needs a client certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fedlm.config import config_to_dict
from fedlm.server.rounds import MAX_SAMPLES
from fedlm.service.auth_trail import AuthTrail
from fedlm.service.blobs import BlobStore, CorruptBlob, Staged, TooLarge
from fedlm.service.certs import ClientVerifier, well_formed_client_id
from fedlm.service.coordinator import Coordinator, log_refusal
from fedlm.core.types import CLIENT_METRICS
from fedlm.service.errors import Refused
from fedlm.service.metrics import ServiceMetrics
from fedlm.service.request_guard import (
    BodyRefused, RequestGuard, RequestLimits, Reservation, StagingSpace, UploadSlots, content_length,
)
from fedlm.service.scheduling import Traits
from fedlm.service.dashboard_routes import dashboard_router
from fedlm.service.secagg_routes import secagg_router
from fedlm.service.settings import ServerSection

log = logging.getLogger("fedlm.service")
MAX_ROUND = 2**31 - 1
MAX_METRICS = 32
HTTP_ERROR_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
REFUSED_BEFORE_COORDINATOR = ("bad_metrics", "too_large", "request_timeout", "upload_in_progress", "staging_full")
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


class TraitsIn(BaseModel):
    charging: bool = False
    unmetered: bool = False
    free_memory_mb: int = Field(0, ge=0, le=2**40)
    region: str = Field("", max_length=64)

    def traits(self) -> Traits:
        return Traits(self.charging, self.unmetered, self.free_memory_mb, self.region)


def is_finite_number(value: Any) -> bool:
    """A JSON number that is a finite float (an int too large for a float is not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # a 1,000-digit integer
        return False


def parse_metrics(text: str) -> dict[str, float]:
    """The X-Fedlm-Metrics header: a JSON object of finite numbers under the declared names (never text)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, an integer past Python's digit limit, nesting past the stack
        raise Refused(400, "bad_metrics", "X-Fedlm-Metrics must be a JSON object of numbers") from None
    ok = isinstance(data, dict) and len(data) <= MAX_METRICS and all(
        isinstance(k, str) and len(k) <= 64 and is_finite_number(v) for k, v in data.items())
    if not ok:
        raise Refused(400, "bad_metrics", f"X-Fedlm-Metrics must be a JSON object of at most {MAX_METRICS} finite numbers")
    if not set(data) <= set(CLIENT_METRICS):  # the unknown name is not echoed: it could be anything
        raise Refused(400, "bad_metrics", f"X-Fedlm-Metrics takes only the metric names {', '.join(CLIENT_METRICS)}")
    return {k: float(v) for k, v in data.items()}


def route_of(request: Request) -> str:
    """The method and route template (never the raw path, which is the client's text)."""
    return f"{request.method} {getattr(request.scope.get('route'), 'path', '(no route)')}"


def identity(request: Request) -> str:
    """The caller's client id: the CN of its verified TLS client certificate (ASGI TLS extension).

    A refusal (401 without a certificate, 403 for one the verifier refuses) goes on the app's AuthTrail."""
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    trail: AuthTrail = request.app.state.auth_trail
    if not chain:
        trail.refused("no_client_certificate", f"{route_of(request)} without a client certificate")
        raise Refused(401, "no_client_certificate", "a client certificate issued by this server's CA is required")
    cert = x509.load_pem_x509_certificate(chain[0].encode())
    try:
        client_id = request.app.state.verifier.identify(cert)
    except Refused as refusal:
        if refusal.status in (401, 403):
            trail.refused(refusal.code, route_of(request), client_id=well_formed_client_id(cert),
                          fingerprint=cert.fingerprint(hashes.SHA256()).hex())
        raise
    request.state.client_id = client_id
    return client_id


Client = Annotated[str, Depends(identity)]


def create_app(coordinator: Coordinator, verifier: ClientVerifier, *, max_upload_bytes: int, population: int,
               tick_seconds: float = 0.5, limits: RequestLimits | None = None, operators: tuple[str, ...] = ()) -> FastAPI:
    """`limits` (RequestLimits.of(settings.server)) default to server.toml's defaults; `operators` (server.operators)
    are the client ids that may use /dashboard."""
    metrics = ServiceMetrics()
    metrics.watch_monitoring(coordinator.monitoring_snapshot)  # alert counts and update-norm quantiles on /metrics
    limits = limits or RequestLimits.of(ServerSection())
    trail = AuthTrail(coordinator.store, metrics)
    slots, staging = UploadSlots(), StagingSpace(limits.max_staging_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ticker = asyncio.create_task(_tick_forever(coordinator, trail, tick_seconds))
        yield
        ticker.cancel()

    app = FastAPI(title="fedlm coordinator", version="1", lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None, description="Federated LoRA fine-tuning: clients authenticate with mTLS; the CN is the client id.")
    app.state.verifier, app.state.limits, app.state.auth_trail = verifier, limits, trail  # service.tls reads the last two
    app.state.operators = tuple(operators)  # service.dashboard_routes reads it
    app.add_middleware(RequestGuard, limits=limits)

    @app.exception_handler(Refused)
    async def refused(_: Request, err: Refused) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        code = getattr(err, "code", None) or HTTP_ERROR_CODES.get(err.status_code, "http_error")
        return JSONResponse({"error": code, "detail": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, _: ClientDisconnect) -> Response:
        """One line, not uvicorn's traceback: a client going away mid-request is not the server's error."""
        client_id = getattr(request.state, "client_id", None)
        log.warning("client %s closed the connection in the middle of %s; nothing of that request was kept", client_id,
                    route_of(request), extra={"client_id": client_id, "code": "client_disconnected"})
        return Response(status_code=400)  # nobody reads it; returning one keeps uvicorn from logging an error

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in err.errors()]
        return JSONResponse({"error": "invalid_request", "detail": errors}, status_code=422)

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_schema(client: Client) -> JSONResponse:  # the API's description is for the federation's members too
        return JSONResponse(app.openapi())

    @app.get("/v1/status")
    def status(client: Client) -> dict[str, Any]:
        with coordinator.lock:
            return {"rounds_done": coordinator.state.rounds_done, "version": coordinator.state.version,
                    "open_round": coordinator.open_round_number, "finished": coordinator.finished,
                    "privacy": coordinator.privacy_report()}

    @app.get("/v1/config")
    def run_config(client: Client) -> dict[str, Any]:
        run = config_to_dict(coordinator.run)
        return {"run": run, "update_size": int(coordinator.state.global_vector.size), "population": population,
                "max_upload_bytes": max_upload_bytes}

    @app.post("/v1/clients/register")
    def register(client: Client, traits: TraitsIn) -> dict[str, Any]:
        coordinator.register(client, traits.traits())
        return {"client_id": client, "registered": True}

    @app.post("/v1/tasks/next")
    def next_task(client: Client, traits: TraitsIn) -> dict[str, Any]:
        offer = coordinator.poll(client, traits.traits())
        task = None if offer is None else offer.__dict__
        return {"task": task, "finished": coordinator.finished, "retry_after": tick_seconds}

    @app.get("/v1/models/{version}/global", response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}}})
    def global_model(client: Client, version: Annotated[int, Path(ge=0, le=MAX_ROUND)]) -> FileResponse:
        sha = coordinator.global_sha(version)
        try:
            path = coordinator.blobs.verified_path(sha)  # never serve bytes that are not the version's
        except CorruptBlob as err:
            log.error("global version %d cannot be served: %s", version, err, extra={"sha256": sha})
            raise Refused(500, "corrupt_blob", f"global version {version} is damaged on the server's disk; "
                          "the operator has been told in the log") from None
        return FileResponse(path, media_type="application/octet-stream", headers={"X-Content-SHA256": sha})

    @app.post("/v1/rounds/{round}/updates", openapi_extra=UPLOAD_BODY)
    async def upload(
        request: Request, client: Client, round: Annotated[int, Path(ge=1, le=MAX_ROUND)],
        version: Annotated[int, Query(ge=0, le=MAX_ROUND)], num_samples: Annotated[int, Query(ge=1, le=MAX_SAMPLES)],
        x_fedlm_metrics: Annotated[str, Header(max_length=4096)] = "{}",
    ) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            values = parse_metrics(x_fedlm_metrics)
            with slots.hold(client):
                await run_in_threadpool(coordinator.precheck, client, round, version)
                declared = content_length(request.scope)
                if declared is not None and declared > max_upload_bytes:
                    raise Refused(413, "too_large", f"body of {declared} bytes exceeds the limit of {max_upload_bytes} bytes")
                with staging.reserve(declared) as reservation:
                    staged = await receive_upload(coordinator.blobs, request, staging, reservation, limit=max_upload_bytes)
                    receipt = await run_in_threadpool(coordinator.submit, client, round=round, version=version,
                                                      num_samples=num_samples, metrics=values, staged=staged)
        except Refused as err:
            metrics.refused.labels(err.code).inc()
            if err.code in REFUSED_BEFORE_COORDINATOR:
                log_refusal(client, round, err)
            raise
        except ClientDisconnect:
            metrics.refused.labels("client_disconnected").inc()
            raise
        metrics.accepted.inc()
        metrics.bytes_received.inc(receipt["size"])
        metrics.upload_seconds.observe(time.perf_counter() - started)
        return receipt

    app.include_router(secagg_router(coordinator, identity))
    app.include_router(dashboard_router(coordinator, identity))  # operators only: app.state.operators (server.operators)

    @app.get("/metrics", response_class=Response, include_in_schema=False)
    def prometheus(client: Client) -> Response:  # scrapers present a certificate issued by the CA too
        with coordinator.lock:
            metrics.round.set(coordinator.open_round_number or 0)
            metrics.rounds_done.set(coordinator.state.rounds_done)
            metrics.version.set(coordinator.state.version)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


async def receive_upload(blobs: BlobStore, request: Request, staging: StagingSpace, reservation: Reservation, *,
                         limit: int) -> Staged:
    """Stream the body to a staging file within the staging space; a body too large or too slow is a refusal."""
    try:
        return await blobs.receive(staging.counted(request.stream(), reservation), limit=limit)
    except TooLarge as err:
        raise Refused(413, "too_large", str(err)) from None
    except BodyRefused as err:
        raise Refused(err.status_code, err.code, str(err.detail)) from None


def finished_message(coordinator: Coordinator) -> str:
    """What `fedlm serve` says once, when no further round will open."""
    done, planned = coordinator.state.rounds_done, coordinator.run.federation.rounds
    stop = None if done >= planned else coordinator.budget_stop_reason()
    head = f"all {done} rounds done" if stop is None else f"no round after round {done} opens ({stop})"
    return (f"{head}; the service keeps serving the final version (v{coordinator.state.version}) and tells clients the "
            "run is finished; stop it with Ctrl-C")


def _tick(coordinator: Coordinator, trail: AuthTrail) -> bool:
    coordinator.tick()
    trail.flush()
    return coordinator.finished


async def _tick_forever(coordinator: Coordinator, trail: AuthTrail, seconds: float) -> None:
    announced = False
    while True:
        await asyncio.sleep(seconds)
        try:
            finished = await run_in_threadpool(_tick, coordinator, trail)
        except Exception:  # a failed tick must not stop the clock; the next one retries
            log.exception("coordinator tick failed")
            continue
        if finished and not announced:
            announced = True
            log.info(finished_message(coordinator), extra={"round": coordinator.state.rounds_done,
                                                           "version": coordinator.state.version})
