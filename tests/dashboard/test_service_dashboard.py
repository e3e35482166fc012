"""The coordinator's /dashboard routes in-process (TestClient, certificates in the ASGI TLS extension): who may
open it, the run's numbers from the store, and making a version production."""

from __future__ import annotations

import pytest
from report_markup import elements, points, table_rows
from sqlalchemy import select
from tiny_service import OPERATOR, build_tiny_service

from fedlm.config import ConfigError
from fedlm.dashboard.page import CONTENT_SECURITY_POLICY
from fedlm.service import store as db
from fedlm.service.settings import settings_from_dict

OPERATOR_ACTION = {"X-Fedlm-Operator-Action": "1"}


@pytest.fixture
def service(tmp_path):
    """Two rounds done: versions 0 (initial), 1 and 2; production is version 2."""
    service = build_tiny_service(tmp_path)
    service.run_round(1, {"alice": 2.0, "bob": 1.0})
    service.run_round(2, {"alice": 1.0, "bob": 0.5})
    return service


def production(service):
    with service.coordinator.store.session() as session:
        return db.production_version(session)


def audit_rows(service):
    with service.coordinator.store.session() as session:
        return [(a.event, a.client_id, a.detail) for a in session.scalars(select(db.AuditRow).order_by(db.AuditRow.id))]


def test_an_operator_sees_every_rounds_numbers_and_the_registry(service):
    # Execute
    answer = service.client(OPERATOR).get("/dashboard")
    # Assert
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert answer.headers["x-frame-options"] == "DENY" and answer.headers["cache-control"] == "no-store"
    html = answer.text
    assert elements(html, "p", "note")[0]["data-round"] == "2"
    train = sorted((x, y) for path, x, y in points(html) if path == ("train_loss",))
    assert train == [(1.0, 1.5), (2.0, 0.75)]  # the cohort's mean train loss, equal weights: (2 + 1) / 2, (1 + 0.5) / 2
    assert [row[:3] + row[-1:] for row in table_rows(html, "registry")] == [
        ["0", "0", "promoted", "make production"], ["1", "1", "promoted", "make production"],
        ["2", "2", "promoted", "production"]]
    facts = dict(table_rows(html, "facts"))
    assert facts["version"] == "2" and facts["rounds_done"] == "2" and facts["finished"] == "false"


def test_the_refresh_period_is_the_viewers_within_bounds(service):
    # Execute
    fast = service.client(OPERATOR).get("/dashboard", params={"refresh": 0.5})
    too_fast = service.client(OPERATOR).get("/dashboard", params={"refresh": 0.1})
    # Assert
    assert [m["content"] for m in elements(fast.text, "meta") if m.get("name") == "fedlm-refresh-seconds"] == ["0.5"]
    assert too_fast.status_code == 422 and too_fast.json()["error"] == "invalid_request"


@pytest.mark.parametrize("method,path", [("GET", "/dashboard"), ("POST", "/dashboard/production")])
def test_another_client_is_refused_as_not_operator_and_the_refusal_is_audited(service, method, path):
    # Execute
    answer = service.client("alice").request(method, path, json={"version": 1}, headers=OPERATOR_ACTION)
    # Assert
    assert answer.status_code == 403 and answer.json()["error"] == "not_operator"
    assert "server.operators" in answer.json()["detail"] and "<html" not in answer.text
    assert audit_rows(service)[-1] == ("auth_refused", "alice", f"not_operator: {method} {path}")
    assert production(service) == 2


@pytest.mark.parametrize("method,path", [("GET", "/dashboard"), ("POST", "/dashboard/production")])
def test_without_a_certificate_the_answer_is_401(service, method, path):
    # Execute
    answer = service.client(None).request(method, path, json={"version": 1}, headers=OPERATOR_ACTION)
    # Assert
    assert answer.status_code == 401 and answer.json()["error"] == "no_client_certificate"
    assert production(service) == 2


def test_with_no_operators_configured_everyone_is_refused_naming_the_setting(tmp_path):
    # Prepare
    service = build_tiny_service(tmp_path, operators=())
    # Execute
    answers = [service.client(OPERATOR).get("/dashboard"),
               service.client(OPERATOR).post("/dashboard/production", json={"version": 0}, headers=OPERATOR_ACTION)]
    # Assert
    for answer in answers:
        assert answer.status_code == 403 and answer.json()["error"] == "no_operators"
        assert "[server] operators" in answer.json()["detail"]
    assert [row[:2] for row in audit_rows(service)[-2:]] == [("auth_refused", OPERATOR)] * 2


def test_an_operator_makes_a_version_production_and_the_change_is_audited(service):
    # Execute
    answer = service.client(OPERATOR).post("/dashboard/production", json={"version": 1}, headers=OPERATOR_ACTION)
    # Assert
    assert answer.status_code == 200 and answer.json() == {"production": 1}
    assert production(service) == 1
    assert audit_rows(service)[-2:] == [("rollback", None, "production 2 -> 1"),
                                        ("operator_production", OPERATOR, "production -> v1 from the dashboard")]
    registry = table_rows(service.client(OPERATOR).get("/dashboard").text, "registry")
    assert [row[-1] for row in registry] == ["make production", "production", "make production"]


@pytest.mark.parametrize("headers", [{}, {"X-Fedlm-Operator-Action": "0"}, {"X-Fedlm-Operator-Action": "yes"}])
def test_a_change_without_the_operator_header_is_refused_and_changes_nothing(service, headers):
    # Prepare
    before = audit_rows(service)
    # Execute
    answer = service.client(OPERATOR).post("/dashboard/production", json={"version": 1}, headers=headers)
    # Assert
    assert answer.status_code == 403 and answer.json()["error"] == "operator_header_required"
    assert production(service) == 2 and audit_rows(service) == before


@pytest.mark.parametrize("body,status,code", [
    ({"version": 7}, 404, "unknown_version"),
    ({"version": -1}, 422, "invalid_request"),
    ({"version": "latest"}, 422, "invalid_request"),
    ({}, 422, "invalid_request"),
])
def test_a_version_that_is_not_there_is_refused_and_changes_nothing(service, body, status, code):
    # Prepare
    before = audit_rows(service)
    # Execute
    answer = service.client(OPERATOR).post("/dashboard/production", json=body, headers=OPERATOR_ACTION)
    # Assert
    assert answer.status_code == status and answer.json()["error"] == code
    assert production(service) == 2 and audit_rows(service) == before


def test_server_operators_takes_client_ids_only():
    # Execute
    settings = settings_from_dict({"server": {"operators": ["ops", "night-shift.2"]}})
    # Assert
    assert settings.server.operators == ("ops", "night-shift.2")
    assert settings_from_dict({}).server.operators == ()
    with pytest.raises(ConfigError, match=r"server.operators: must be client ids .*'bad id'"):
        settings_from_dict({"server": {"operators": ["ops", "bad id"]}})
    with pytest.raises(ConfigError, match="server.operators: must be a list"):
        settings_from_dict({"server": {"operators": "ops"}})


def test_serve_opens_the_dashboard_to_the_operators_of_server_toml(tmp_path):
    # Prepare: a server.toml naming one operator, and the app `fedlm serve` builds from it
    from fastapi.testclient import TestClient

    from fedlm.service import certs
    from fedlm.service.runtime import build_runtime
    from fedlm.service.settings import load_settings
    from fedlm.service.tls import with_tls_extension

    certs.init_ca(tmp_path / "certs")
    (tmp_path / "run.toml").write_text('[model]\nname = "tiny"\n')
    (tmp_path / "server.toml").write_text('[server]\ndata_dir = "state"\nrun_config = "run.toml"\noperators = ["ops"]\n')
    runtime = build_runtime(load_settings(tmp_path / "server.toml"))
    try:
        def as_client(name):
            chain = [certs.issue_client(tmp_path / "certs", name)[0].read_text()]
            return TestClient(with_tls_extension(runtime.app, {"client_cert_chain": chain}))

        # Execute
        operator, other = as_client("ops").get("/dashboard"), as_client("alice").get("/dashboard")
    finally:
        runtime.lock.release()
        runtime.coordinator.store.dispose()
    # Assert
    assert operator.status_code == 200 and "fedlm coordinator dashboard" in operator.text
    assert other.status_code == 403 and other.json()["error"] == "not_operator"
