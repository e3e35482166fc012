"""The one way a request is refused: an HTTP 4xx (5xx when the server itself cannot answer safely) with a JSON body naming what was wrong."""

from __future__ import annotations


class Refused(Exception):
    """Refuse a request: `status` (4xx; 500/503 for the server's own state), a stable machine-readable `code`, a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.message}
