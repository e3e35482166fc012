"""What a running simulation tells its caller: a progress protocol with a silent default."""

from __future__ import annotations

from typing import Any, Protocol

from fedlm.eval.metrics import EvalResult


class Reporter(Protocol):
    def run_started(self, rounds: int) -> None: ...
    def round_started(self, round: int, cohort_size: int) -> None: ...
    def client_started(self, round: int, index: int, steps: int) -> None: ...
    def step_done(self, step: int, loss: float) -> None: ...
    def client_done(self, round: int, index: int) -> None: ...
    def evaluated(self, label: str, result: EvalResult) -> None: ...
    def round_done(self, record: dict[str, Any]) -> None: ...


class SilentReporter:
    """Reports nothing; the default for tests and library use."""

    def run_started(self, rounds: int) -> None:
        pass

    def round_started(self, round: int, cohort_size: int) -> None:
        pass

    def client_started(self, round: int, index: int, steps: int) -> None:
        pass

    def step_done(self, step: int, loss: float) -> None:
        pass

    def client_done(self, round: int, index: int) -> None:
        pass

    def evaluated(self, label: str, result: EvalResult) -> None:
        pass

    def round_done(self, record: dict[str, Any]) -> None:
        pass
