"""Schema-driven fuzzing (schemathesis over the OpenAPI schema, in-process ASGI): no input gives a 5xx.

The caller holds a valid certificate and a round is open with it in the cohort, so
generated requests get past authentication into the routes' own checks. Each operation
gets a bounded number of generated cases (schemathesis' pytest plugin does not load
under pytest 9 here, so the strategies are driven by hypothesis directly).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from schemathesis.generation import GenerationMode

from conftest import build_service
from secagg_parties import SECURE

EXAMPLES = 20  # per operation and mode: the whole fuzz stays within seconds


@pytest.fixture(params=["plain", "secagg"])
def fuzz_schema(tmp_path, request):
    secure = request.param == "secagg"  # a SecAgg round at its advertise stage, alice in the cohort
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'fuzz.db'}", clients_per_round=3 if secure else 2,
                            overrides=SECURE if secure else None)
    for name in ("alice", "bob", "carol") if secure else ("alice", "bob"):
        service.clients[name].post("/v1/clients/register", json={})
        service.clients[name].post("/v1/tasks/next", json={})
    assert service.coordinator.rnd is not None
    app = service.clients["alice"].app  # the real app, with alice's certificate in the TLS extension
    return schemathesis.openapi.from_asgi("/openapi.json", app), service


def test_no_generated_request_gets_a_server_error(fuzz_schema):
    schema, service = fuzz_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/rounds/{round}/updates", "/v1/tasks/next", "/v1/clients/register",
                                              "/v1/rounds/{round}/secagg/keys", "/v1/rounds/{round}/secagg/unmask"}
    seen: dict[str, set[int]] = {}

    upload = next(op for op in operations if op.path == "/v1/rounds/{round}/updates")
    runs = [(op, GenerationMode.POSITIVE, {}) for op in operations]
    runs += [(op, GenerationMode.NEGATIVE, {}) for op in operations if list(op.iter_parameters()) or len(op.body)]
    # and bodies aimed at the open round, so the payload checks themselves are fuzzed
    runs.append((upload, GenerationMode.POSITIVE, {"path_parameters": {"round": 1}, "query": {"version": 0, "num_samples": 1}}))
    # and every SecAgg route aimed at the open round, so the message checks themselves are fuzzed
    runs += [(op, GenerationMode.POSITIVE, {"path_parameters": {"round": 1}}) for op in operations if "/secagg/" in op.path]
    for operation, mode, fixed in runs:
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(mode, **fixed))
        def no_server_error(case):
            response = case.call()
            seen.setdefault(operation.label, set()).add(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
            if response.status_code >= 400:
                assert "error" in response.json()

        no_server_error()
    assert len(seen) == len(operations)
    assert service.coordinator.rnd is not None and service.coordinator.state.version == 0  # nothing generated got folded
