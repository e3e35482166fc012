"""The error every settings check raises, and the check itself: one message per key, naming it."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, or out of range."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise ConfigError naming `key` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {message}")
