"""The coordinator's HTTP API (FastAPI): routes only; the coordinator holds the logic.

Versioned under /v1; the SecAgg stages are in service.secagg_routes. The caller's identity is the CN of its TLS client certificate,
read from the ASGI TLS extension (see service.tls) and checked by `ClientVerifier`.
Every refusal is a 4xx with a JSON body {"error": code, "detail": message}.
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
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedlm.config import config_to_dict
from fedlm.server.rounds import MAX_SAMPLES
from fedlm.service.blobs import CorruptBlob, TooLarge
from fedlm.service.certs import ClientVerifier
from fedlm.service.coordinator import Coordinator, log_refusal
from fedlm.core.types import CLIENT_METRICS
from fedlm.service.errors import Refused
from fedlm.service.metrics import ServiceMetrics
from fedlm.service.scheduling import Traits
from fedlm.service.secagg_routes import secagg_router

log = logging.getLogger("fedlm.service")
MAX_ROUND = 2**31 - 1
MAX_METRICS = 32
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


class TraitsIn(BaseModel):
    charging: bool = False
    unmetered: bool = False
    free_memory_mb: int = Field(0, ge=0, le=2**40)
    region: str = Field("", max_length=64)

    def traits(self) -> Traits:
        return Traits(self.charging, self.unmetered, self.free_memory_mb, self.region)


def parse_metrics(text: str) -> dict[str, float]:
    """The X-Fedlm-Metrics header: a JSON object of finite numbers under the declared names (never text)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise Refused(400, "bad_metrics", "X-Fedlm-Metrics must be a JSON object of numbers") from None
    ok = isinstance(data, dict) and len(data) <= MAX_METRICS and all(
        isinstance(k, str) and len(k) <= 64 and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for k, v in data.items())
    if not ok:
        raise Refused(400, "bad_metrics", f"X-Fedlm-Metrics must be a JSON object of at most {MAX_METRICS} finite numbers")
    if not set(data) <= set(CLIENT_METRICS):  # the unknown name is not echoed: it could be anything
        raise Refused(400, "bad_metrics", f"X-Fedlm-Metrics takes only the metric names {', '.join(CLIENT_METRICS)}")
    return {k: float(v) for k, v in data.items()}


def identity(request: Request) -> str:
    """The caller's client id: the CN of its verified TLS client certificate (ASGI TLS extension)."""
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        raise Refused(401, "no_client_certificate", "a client certificate issued by this server's CA is required")
    return request.app.state.verifier.identify(x509.load_pem_x509_certificate(chain[0].encode()))


Client = Annotated[str, Depends(identity)]


def create_app(coordinator: Coordinator, verifier: ClientVerifier, *, max_upload_bytes: int, population: int,
               tick_seconds: float = 0.5) -> FastAPI:
    metrics = ServiceMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ticker = asyncio.create_task(_tick_forever(coordinator, tick_seconds))
        yield
        ticker.cancel()

    app = FastAPI(title="fedlm coordinator", version="1", lifespan=lifespan,
                  description="Federated LoRA fine-tuning: clients authenticate with mTLS; the CN is the client id.")
    app.state.verifier = verifier

    @app.exception_handler(Refused)
    async def refused(_: Request, err: Refused) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return JSONResponse({"error": code, "detail": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in err.errors()]
        return JSONResponse({"error": "invalid_request", "detail": errors}, status_code=422)

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/status")
    def status(client: Client) -> dict[str, Any]:
        with coordinator.lock:
            rnd = coordinator.rnd
            return {"rounds_done": coordinator.state.rounds_done, "version": coordinator.state.version,
                    "open_round": rnd.round if rnd else None, "finished": coordinator.finished,
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
            await run_in_threadpool(coordinator.precheck, client, round, version)
            try:
                staged = await coordinator.blobs.receive(request.stream(), limit=max_upload_bytes)
            except TooLarge as err:
                raise Refused(413, "too_large", str(err)) from None
            receipt = await run_in_threadpool(coordinator.submit, client, round=round, version=version,
                                              num_samples=num_samples, metrics=values, staged=staged)
        except Refused as err:
            metrics.refused.labels(err.code).inc()
            if err.code in ("bad_metrics", "too_large"):  # refused here, before the coordinator saw the upload
                log_refusal(client, round, err)
            raise
        metrics.accepted.inc()
        metrics.bytes_received.inc(receipt["size"])
        metrics.upload_seconds.observe(time.perf_counter() - started)
        return receipt

    app.include_router(secagg_router(coordinator, identity))

    @app.get("/metrics", response_class=Response, include_in_schema=False)
    def prometheus(client: Client) -> Response:  # scrapers present a certificate issued by the CA too
        with coordinator.lock:
            metrics.round.set(coordinator.rnd.round if coordinator.rnd else 0)
            metrics.rounds_done.set(coordinator.state.rounds_done)
            metrics.version.set(coordinator.state.version)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


async def _tick_forever(coordinator: Coordinator, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await run_in_threadpool(coordinator.tick)
        except Exception:  # a failed tick must not stop the clock; the next one retries
            log.exception("coordinator tick failed")
