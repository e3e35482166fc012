"""Structured logs: [server] log_format = "json" gives one JSON object per line with ids, sizes, hashes, codes, and
never a byte or a word of what a client sent.

Prepare / Execute / Assert against the real app in process (conftest's `service`: FedAvg over 6 values).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from datetime import datetime

import numpy as np
import pytest
from safetensors.numpy import save

from fedlm.config import ConfigError
from fedlm.service.settings import settings_from_dict
from fedlm.service.structured_logs import JsonFormatter, make_handler
from fedlm.updates import wire

from conftest import INITIAL

# 24 upper-case letters: as six little-endian float32 values they are finite (top byte 0x41..0x5A), so an update
# whose body is exactly these bytes passes every check and is accepted
MARKER = "PAYLOADMARKERSHOULDNTLOG"


@pytest.fixture
def json_lines():
    """The JSON lines the service's loggers write while the test runs."""
    stream, logger = io.StringIO(), logging.getLogger("fedlm")
    handler, level = make_handler("json", stream), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def upload(http, body: bytes, metrics: str = "{}"):
    return http.post("/v1/rounds/1/updates", content=body, params={"version": 0, "num_samples": 2},
                     headers={"X-Fedlm-Metrics": metrics})


def test_accepted_and_refused_uploads_log_ids_sizes_hashes_and_codes_never_contents(service, json_lines):
    # Prepare: round 1 open for alice and bob
    alice, bob = service.clients["alice"], service.clients["bob"]
    for http in (alice, bob):
        assert http.post("/v1/clients/register", json={}).status_code == 200
    for http in (alice, bob):
        assert http.post("/v1/tasks/next", json={}).json()["task"]["round"] == 1
    accepted_body = wire.serialize_dense(np.frombuffer(MARKER.encode(), np.float32).copy())
    malformed_body = save({MARKER: np.zeros(INITIAL.size, np.float32)})
    # Execute: the marker as a metric's name (refused: only declared names), accepted (marker in the body),
    # malformed (the refusal's detail quotes the marker), bad metrics (marker as text), a replay; then bob's
    # valid update closes the round
    named = upload(alice, accepted_body, json.dumps({MARKER: 1.0}))
    accepted = upload(alice, accepted_body, json.dumps({"train_loss": 1.0}))
    malformed = upload(bob, malformed_body)
    bad_metrics = upload(bob, accepted_body, json.dumps({"note": MARKER}))
    replay = upload(alice, accepted_body)
    closing = upload(bob, wire.serialize_dense(np.ones(INITIAL.size, np.float32)))
    # Assert: the answers
    assert accepted.status_code == 200 and closing.status_code == 200
    assert (named.status_code, named.json()["error"]) == (400, "bad_metrics") and MARKER not in named.text
    assert (malformed.status_code, malformed.json()["error"]) == (400, "malformed_update") and MARKER in malformed.text
    assert (bad_metrics.status_code, bad_metrics.json()["error"]) == (400, "bad_metrics")
    assert (replay.status_code, replay.json()["error"]) == (409, "already_answered")
    # every line one JSON object with the base fields
    text = json_lines.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert all(datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0 for line in lines)
    uploads = [line for line in lines if "code" in line or "sha256" in line]
    # the refused metric name: the code only (the header is refused before the body is read)
    named_line = uploads.pop(0)
    assert named_line == {**named_line, "client_id": "alice", "round": 1, "code": "bad_metrics", "status": 400}
    assert "sha256" not in named_line
    # the accepted update: client, round, size and hash as fields
    assert uploads[0] == {**uploads[0], "client_id": "alice", "round": 1, "size": len(accepted_body),
                          "sha256": hashlib.sha256(accepted_body).hexdigest()}
    assert "code" not in uploads[0] and uploads[0]["level"] == "INFO" and uploads[0]["logger"] == "fedlm.service"
    # the refusals: the code (never the detail), and size and hash where the body was read
    assert uploads[1] == {**uploads[1], "client_id": "bob", "round": 1, "code": "malformed_update", "status": 400,
                          "size": len(malformed_body), "sha256": hashlib.sha256(malformed_body).hexdigest()}
    assert uploads[2] == {**uploads[2], "client_id": "bob", "round": 1, "code": "bad_metrics", "status": 400}
    assert uploads[3] == {**uploads[3], "client_id": "alice", "round": 1, "code": "already_answered", "status": 409}
    assert uploads[4]["client_id"] == "bob" and "code" not in uploads[4] and len(uploads) == 5
    closed = [line for line in lines if line["message"].startswith("round 1 closed")]
    assert closed and closed[0]["round"] == 1 and closed[0]["version"] == 1 and closed[0]["accepted"] == 2
    # nothing the clients sent: not the marker, not the bodies' bytes in any spelling
    for body in (accepted_body, malformed_body):
        assert body.hex() not in text and body[16:].decode("latin-1") not in text
    assert MARKER not in text and MARKER.lower() not in text


def test_json_lines_carry_only_plain_values_and_the_exception():
    # Prepare
    record = logging.LogRecord("fedlm.service", logging.WARNING, __file__, 1, "tick %d failed", (3,), None)
    record.__dict__.update(round=3, size=40, ratio=float("nan"), vector=np.arange(3), raw=b"secret", ok=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    # Execute
    line = json.loads(JsonFormatter().format(record))
    # Assert: plain values kept, non-finite floats spelled out, arrays and bytes reduced to their type's name
    assert (line["message"], line["level"], line["logger"]) == ("tick 3 failed", "WARNING", "fedlm.service")
    assert (line["round"], line["size"], line["ratio"], line["ok"]) == (3, 40, "nan", True)
    assert (line["vector"], line["raw"]) == ("<ndarray>", "<bytes>")
    assert "RuntimeError: boom" in line["exception"] and "secret" not in json.dumps(line)


def test_log_format_setting_defaults_to_text_and_refuses_others():
    assert settings_from_dict({}).server.log_format == "text"
    assert settings_from_dict({"server": {"log_format": "json"}}).server.log_format == "json"
    with pytest.raises(ConfigError, match=r"server\.log_format"):
        settings_from_dict({"server": {"log_format": "xml"}})
    with pytest.raises(ValueError, match="log format"):
        make_handler("yaml")
