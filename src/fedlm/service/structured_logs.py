"""The coordinator's log lines: readable text, or one JSON object per line for log pipelines.

`[server] log_format = "json"` makes every line a JSON object with `time` (UTC, ISO 8601),
`level`, `logger`, `message`, and the structured fields the caller passed with `extra=`
(client id, round, size, sha256, refusal code, ...). Only plain values pass through: a
str, int, float, bool or None; anything else is written as its type name, so an array or
a byte string handed to a logger by mistake never reaches the log. The service logs ids,
sizes and hashes only, never update contents or client text.

Written here rather than taken from a library (python-json-logger, structlog): twenty
lines of the standard library do it, and the allow-list of value types is the point.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# the attributes every LogRecord has; anything else on a record came from `extra=`
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def plain(value: Any) -> Any:
    """`value` if it is a plain JSON scalar (non-finite floats as strings), else its type's name."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return f"<{type(value).__name__}>"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the record's `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in line:
                line[key] = plain(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def make_handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing `log_format` ("text" or "json") lines."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Route every logger (uvicorn's included, see runtime.uvicorn_config) to one handler of `log_format` on the root."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(make_handler(log_format))
    root.setLevel(level)
