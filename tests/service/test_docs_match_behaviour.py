"""What docs/service.md says is what the service does (red-team finding 10 of the fleet issue).

Before: /openapi.json and /docs answered without a certificate; client ids were documented up
to 128 characters while a certificate's CN holds 64; several error codes were undocumented;
`fedlm join` with an expired or foreign certificate retried for 300 s without saying why, and
said nothing while it started; `serve` went on after the last round without a word.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fedlm.cli.main import app as cli
from fedlm.service import certs, client_worker
from fedlm.service.app import HTTP_ERROR_CODES, create_app
from fedlm.service.client_worker import CertificateProblem, JoinSettings, join

from conftest import MAX_UPLOAD, client_for, make_app
from live_server import issue_expired, live_server

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "service.md").read_text()


def answer_codes() -> set[str]:
    """Every `error` code the service's source can answer with."""
    codes = set(HTTP_ERROR_CODES.values()) | {"http_error"}
    for path in (ROOT / "src" / "fedlm" / "service").glob("*.py"):
        text = path.read_text()
        codes |= set(re.findall(r'Refused\([^"]*?"([a-z_]+)"', text))
        codes |= set(re.findall(r'"error":\s*"([a-z_]+)"', text))
    return codes


def test_every_error_code_the_service_answers_with_is_documented():
    codes = answer_codes()
    assert {"not_registered", "unknown_version", "bad_client_id", "staging_full", "request_timeout"} <= codes
    undocumented = sorted(c for c in codes if f"`{c}`" not in DOCS)
    assert undocumented == []
    assert "| 404 | `round_not_open` |" in DOCS  # a round after the next one


@pytest.mark.parametrize("path,status", [("/openapi.json", 401), ("/docs", 404), ("/redoc", 404)])
def test_the_api_description_needs_a_certificate_like_every_route_but_health(service, path, status):
    answer = service.clients["anonymous"].get(path)
    assert answer.status_code == status  # the description needs a certificate; the browsable pages are off
    assert "paths" not in answer.text and "swagger" not in answer.text.lower()
    assert service.clients["anonymous"].get("/v1/health").status_code == 200


def test_a_client_gets_the_openapi_description_with_its_certificate(service):
    answer = service.clients["alice"].get("/openapi.json")
    assert answer.status_code == 200 and "/v1/rounds/{round}/updates" in answer.json()["paths"]


def test_certs_issue_refuses_a_client_id_past_64_characters_and_the_server_admits_one_of_64(service):
    runner = CliRunner()
    folder = str(service.root / "certs")
    # A 65-character id: refused with the reason, no file written.
    refused = runner.invoke(cli, ["certs", "issue", "a" * 65, "--dir", folder])
    assert refused.exit_code == 2 and "holds at most 64" in " ".join(refused.output.split())
    assert not (service.root / "certs" / "clients" / f"{'a' * 65}.pem").exists()
    # A 64-character id: issued, and accepted by the server as that client.
    issued = runner.invoke(cli, ["certs", "issue", "b" * 64, "--dir", folder])
    assert issued.exit_code == 0
    client = client_for(make_app(service.coordinator, service.root), service.root / "certs" / "clients" / f"{'b' * 64}.pem")
    assert client.post("/v1/clients/register", json={}).json() == {"client_id": "b" * 64, "registered": True}


def join_settings(root: Path, port: int, name: str, *, ca: Path | None = None, folder: str = "certs") -> JoinSettings:
    clients = root / folder / "clients"
    return JoinSettings(server=f"https://127.0.0.1:{port}", data=root, cert=clients / f"{name}.pem",
                        key=clients / f"{name}.key", ca=ca or root / "certs" / certs.CA_CERT,
                        backoff_initial=0.05, backoff_max=0.2, give_up_after=5.0)


def test_join_with_an_expired_certificate_stops_at_once_saying_so(service):
    issue_expired(service.root / "certs", "old")
    started = time.monotonic()
    with pytest.raises(CertificateProblem, match=r"certificate .*old\.pem expired on .*fedlm certs issue old"):
        join(join_settings(service.root, 9, "old"))  # checked before any connection: no server needed
    assert time.monotonic() - started < 2


def test_join_with_a_certificate_of_another_ca_stops_at_once_saying_so(service):
    # Prepare: mallory's certificate comes from another CA; the server hangs up after the handshake.
    certs.init_ca(service.root / "other")
    certs.issue_client(service.root / "other", "mallory")
    with live_server(make_app(service.coordinator, service.root), service.root) as port:
        started = time.monotonic()
        # Execute / Assert: no 300 s of retries; the message says which certificate and what to do.
        with pytest.raises(CertificateProblem, match=r"mallory\.pem was not issued by the CA in --ca .*fedlm certs issue mallory"):
            join(join_settings(service.root, port, "mallory", folder="other"))
        assert time.monotonic() - started < 4


def test_join_that_does_not_trust_the_server_stops_at_once_pointing_at_ca(service):
    certs.init_ca(service.root / "other")
    with live_server(make_app(service.coordinator, service.root), service.root) as port:
        with pytest.raises(CertificateProblem, match=r"does not trust the server's certificate .*--ca .*other"):
            join(join_settings(service.root, port, "alice", ca=service.root / "other" / certs.CA_CERT))


def test_join_cli_prints_a_certificate_problem_and_exits_1(monkeypatch, tmp_path):
    def refuse(settings):
        raise CertificateProblem("this client's certificate x.pem expired on 2020-01-01 [UTC]")

    monkeypatch.setattr(client_worker, "join", refuse)
    result = CliRunner().invoke(cli, ["join", "--server", "https://127.0.0.1:9", "--data", str(tmp_path), "--cert", "x.pem",
                                      "--key", "x.key", "--ca", "ca.pem"])
    assert result.exit_code == 1
    assert "certificate problem: this client's certificate x.pem expired on 2020-01-01 [UTC]" in " ".join(result.output.split())


def test_join_says_what_it_does_while_it_starts(service, monkeypatch, caplog):
    # Prepare: the worker over the in-process app, a stand-in trainer, and a run that ends at once.
    from test_worker_loop import in_process_connection

    app = create_app(service.coordinator, certs.ClientVerifier(service.root / "certs" / certs.CA_CERT, None),
                     max_upload_bytes=MAX_UPLOAD, population=0)
    monkeypatch.setattr(client_worker, "Connection", lambda settings: in_process_connection(service, "alice", app))
    monkeypatch.setattr("fedlm.service.local_trainer.LocalTrainer.build", lambda *a, **k: type("T", (), {"train": None})())
    monkeypatch.setattr(client_worker, "take_part", lambda conn, me, train, traits: 0)
    # Execute
    with caplog.at_level(logging.INFO, logger="fedlm.join"):
        join(join_settings(service.root, 9, "alice"))
    # Assert: a line before each slow step.
    lines = [r.getMessage() for r in caplog.records if r.name == "fedlm.join"]
    assert [line.split(" ")[0] for line in lines] == ["connecting", "registered", "ready"]
    assert lines[1].startswith("registered as client alice; loading the model (tiny)")


def test_serve_says_once_that_the_last_round_is_done(service, caplog):
    # Prepare: a coordinator whose three rounds are done.
    coordinator = service.coordinator
    coordinator.state = replace(coordinator.state, rounds_done=3)
    app = create_app(coordinator, certs.ClientVerifier(service.root / "certs" / certs.CA_CERT, None),
                     max_upload_bytes=MAX_UPLOAD, population=0, tick_seconds=0.02)
    # Execute: the app's clock runs for many ticks.
    with caplog.at_level(logging.INFO), TestClient(app):
        time.sleep(0.4)
    # Assert
    done = [r.getMessage() for r in caplog.records if "rounds done" in r.getMessage()]
    assert done == ["all 3 rounds done; the service keeps serving the final version (v0) and tells clients the run is "
                    "finished; stop it with Ctrl-C"]
