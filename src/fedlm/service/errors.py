"""The one way a request is refused: an HTTP 4xx with a JSON body naming what was wrong."""

from __future__ import annotations


class Refused(Exception):
    """Refuse a request: `status` (4xx), a stable machine-readable `code`, and a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.message}
