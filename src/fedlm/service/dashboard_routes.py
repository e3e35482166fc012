"""The coordinator's live dashboard, for operators: GET /dashboard and POST /dashboard/production (routes only).

    GET  /dashboard[?refresh=S]   the run's views (fedlm.dashboard.page) from the store's model versions,
                                  refreshed in place every S seconds (default 5), with the registry
    POST /dashboard/production    {"version": N}: point production at version N (service.registry.rollback,
                                  the checks of `fedlm models rollback`); needs the header
                                  X-Fedlm-Operator-Action: 1; audited with the operator's id

Who: a client certificate as on every route (401 without one, 403 for one the verifier refuses),
and then its CN must be one of server.toml's `[server] operators` (app.state.operators): any
other client gets 403 `not_operator`, and with no operators configured every dashboard request
is refused with 403 `no_operators` naming the setting. Both go on the AuthTrail like other
refused authentications. Read-only views are refused to other clients too: the metrics
describe the whole federation.

Why a header on the POST: a browser sends the operator's certificate with any request to this
origin, a cross-site form's included (CSRF). A form cannot set a header, and a cross-site
fetch that sets one needs a CORS preflight this app never grants; the page's own script sets
it (fedlm.dashboard.page). The page's Content-Security-Policy lets only that script run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from fedlm.config import config_to_dict
from fedlm.dashboard.page import OPERATOR_HEADER, SECURITY_HEADERS, dashboard_page
from fedlm.dashboard.registry_panel import registry_panel
from fedlm.service import store as db
from fedlm.service.coordinator import Coordinator
from fedlm.service.errors import Refused
from fedlm.service.registry import held_out, list_versions, rollback

log = logging.getLogger("fedlm.service")
REFRESH_SECONDS = 5.0
ACTION = "dashboard/production"  # relative to /dashboard: still right behind a proxy that adds a path prefix


class ProductionIn(BaseModel):
    version: int = Field(ge=0, le=2**31 - 1, description="the model version to make production")


def where(request: Request) -> str:
    """The method and route template (never the raw path, which is the client's text)."""
    return f"{request.method} {getattr(request.scope.get('route'), 'path', '(no route)')}"


def check_operator(request: Request, client: str) -> None:
    """Refuse (and put on the AuthTrail) a client that is not in server.operators, or anyone when none is set."""
    operators = getattr(request.app.state, "operators", ())
    trail = request.app.state.auth_trail
    if not operators:
        trail.refused("no_operators", where(request), client_id=client)
        raise Refused(403, "no_operators", "the dashboard is off: no operator is configured; list the client ids "
                      "(certificate CNs) allowed to use it in server.toml as [server] operators = [\"...\"] and restart")
    if client not in operators:
        trail.refused("not_operator", where(request), client_id=client)
        raise Refused(403, "not_operator", f"client {client} is not an operator: only the client ids in "
                      "server.operators may use the dashboard")


def version_record(version: Mapping[str, Any]) -> dict[str, Any]:
    """A version row as a metrics line of the report: its round, version, status and metrics, the held-out
    loss (eval_loss) as eval.loss and eval.perplexity where the report's evaluation charts look."""
    metrics = dict(version.get("metrics") or {})
    if "eval" not in metrics:
        evaluation = held_out(metrics.pop("eval_loss", None))
        if evaluation:
            metrics["eval"] = evaluation
    if isinstance(metrics.get("eval_slices"), Mapping):  # one chart per figure with a line per slice, as sites get
        metrics["eval_slices"] = {name: held_out(loss) for name, loss in metrics["eval_slices"].items()}
    return {"round": version["round"], "version": version["version"], "status": version["status"], **metrics}


def service_summary(coordinator: Coordinator, production: int | None) -> dict[str, Any]:
    """The run's state as the dashboard's summary: the versions table marks `version` (production)."""
    with coordinator.lock:
        finished = coordinator.finished
        facts = {"rounds_done": coordinator.state.rounds_done, "planned_rounds": coordinator.run.federation.rounds,
                 "open_round": coordinator.open_round_number, "latest_version": coordinator.state.version,
                 "finished": finished, "privacy": coordinator.privacy_report()}
    opened = facts["open_round"]
    status = "finished" if finished else f"round {opened} open" if opened is not None else "waiting for clients"
    return {"status": status, "version": production, "model": coordinator.run.model.name, **facts}


def render_dashboard(coordinator: Coordinator, *, refresh_seconds: float) -> str:
    versions = list_versions(coordinator.store)
    production = next((v["version"] for v in versions if v["production"]), None)
    # version 0 is the initial adapter (no round); a "restored" version repeats production's model and figures in the
    # round of the version it replaced: both are in the registry table, not in the charts
    records = [version_record(v) for v in versions if v["round"] > 0 and v["status"] != "restored"]
    controls = [("Registry", registry_panel(versions, action=ACTION))]
    return dashboard_page(records, config_to_dict(coordinator.run), service_summary(coordinator, production),
                          title="fedlm coordinator dashboard", refresh_seconds=refresh_seconds, controls=controls,
                          current_note="production")


def dashboard_router(coordinator: Coordinator, identify: Callable[..., str]) -> APIRouter:
    """`identify` is the dependency that yields the caller's client id (its certificate's CN)."""
    router = APIRouter(prefix="/dashboard", include_in_schema=False)

    def operator(request: Request, client: str = Depends(identify)) -> str:
        check_operator(request, client)
        return client

    def operator_action(request: Request, client: str = Depends(operator)) -> str:
        if request.headers.get(OPERATOR_HEADER) != "1":
            log.warning("registry change from the dashboard refused: no %s header (a cross-site form?)", OPERATOR_HEADER,
                        extra={"client_id": client, "code": "operator_header_required"})
            raise Refused(403, "operator_header_required", f"a registry change needs the header {OPERATOR_HEADER}: 1 "
                          "(the dashboard's buttons send it; a form on another site cannot)")
        return client

    @router.get("", response_class=HTMLResponse)
    def dashboard(refresh: Annotated[float, Query(ge=0.5, le=3600)] = REFRESH_SECONDS,
                  client: str = Depends(operator)) -> HTMLResponse:
        return HTMLResponse(render_dashboard(coordinator, refresh_seconds=refresh), headers=SECURITY_HEADERS)

    @router.post("/production")
    def make_production(body: ProductionIn, client: str = Depends(operator_action)) -> dict[str, Any]:
        try:
            rollback(coordinator.store, body.version)
        except ValueError as err:
            raise Refused(404, "unknown_version", str(err)) from None
        with coordinator.store.session() as session:
            db.audit(session, "operator_production", client_id=client, detail=f"production -> v{body.version} from the dashboard")
        log.info("production is now v%d (operator %s, from the dashboard)", body.version, client,
                 extra={"client_id": client, "version": body.version})
        return {"production": body.version}

    return router
