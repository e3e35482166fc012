"""The error every settings check raises, and the check itself: one message per key, naming it.

Outside a collector, `require` raises at the first failed check. Loading a config runs
inside `collect_problems()`, where `require` records the problem and lets the checks go
on, so that one ConfigError lists every problem of the file and its overrides at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# The problems of the config being loaded; None when no collector is active (require raises).
_collected: ContextVar[list[str] | None] = ContextVar("fedlm_config_problems", default=None)


class ConfigError(ValueError):
    """One or more settings are unknown, of the wrong type, or out of range; `.problems` lists them, one line each."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)  # args = the problems, so the error pickles whole
        self.problems = list(problems)

    def __str__(self) -> str:
        return describe_problems(self.problems)


def describe_problems(problems: list[str]) -> str:
    """One problem as it is; several as a count and one indented line each."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems in the settings:\n" + "\n".join(f"  {problem}" for problem in problems)


def report(problem: str) -> None:
    """Record `problem` in the active collector (once), or raise it at once when none is active."""
    problems = _collected.get()
    if problems is None:
        raise ConfigError(problem)
    if problem not in problems:
        problems.append(problem)


def require(ok: bool, key: str, message: str) -> None:
    """Unless `ok`, a ConfigError `key: message`: raised, or recorded while `collect_problems` is active."""
    if not ok:
        report(f"{key}: {message}")


def report_error(err: ConfigError) -> None:
    """Record every problem of an error raised directly (not through `require`)."""
    for problem in err.problems:
        report(problem)


@contextmanager
def collect_problems() -> Iterator[list[str]]:
    """Run every check in the block, then raise one ConfigError listing all the problems found.

    A collector inside another one adds to the outer list; the outermost raises. A
    ConfigError raised directly in the block ends it and joins the list.
    """
    if _collected.get() is not None:
        yield _collected.get()
        return
    problems: list[str] = []
    token = _collected.set(problems)
    try:
        yield problems
    except ConfigError as err:
        problems.extend(p for p in err.problems if p not in problems)
    finally:
        _collected.reset(token)
    if problems:
        raise ConfigError(*problems)
