"""The trackers a run reports to (tracking.report_to), driven as one: open, log each round, close.

The run directory is the source of truth. Opening a tracker may fail (a library missing, a
server unreachable): the run stops before it trains. Once training runs, a tracker that fails
is dropped with a warning and the run goes on; `--resume` reads back which rounds the tracker
holds and logs the missing ones from metrics.jsonl.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fedlm.tracking.mlflow_run import open_mlflow
from fedlm.tracking.settings import TrackingSettings
from fedlm.tracking.state import read_tracking_state, write_tracking_state
from fedlm.tracking.tensorboard_events import open_tensorboard

log = logging.getLogger(__name__)


class Tracker(Protocol):
    name: str

    def log_round(self, record: dict[str, Any]) -> None: ...

    def state(self) -> dict[str, Any]: ...

    def close(self, status: str, artifacts: tuple[Path, ...]) -> None: ...

    def abandon(self) -> None: ...


Opener = Callable[..., Tracker]
OPENERS: dict[str, Opener] = {"tensorboard": open_tensorboard, "mlflow": open_mlflow}


class RunTrackers:
    """The open trackers of one run; a tracker that raises is dropped (with a warning), never the run."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.active = list(trackers)

    def log_round(self, record: dict[str, Any]) -> None:
        for tracker in list(self.active):
            self.guarded(tracker, f"round {record['round']}", lambda t=tracker: t.log_round(record))

    def close(self, status: str, artifacts: tuple[Path, ...] = ()) -> None:
        for tracker in list(self.active):
            self.guarded(tracker, "the run's end", lambda t=tracker: t.close(status, artifacts))
        self.active = []

    def guarded(self, tracker: Tracker, when: str, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as err:  # noqa: BLE001 - any tracker failure; the run directory keeps every round
            log.warning("tracking: %s failed at %s (%s: %s); it logs nothing more this run. The run goes on and its "
                        "directory holds every round; --resume logs the missing rounds to it",
                        tracker.name, when, type(err).__name__, err)
            self.active.remove(tracker)
            try:
                tracker.abandon()
            except Exception:  # noqa: BLE001 - already failed; releasing it is best effort
                pass


def open_trackers(
    settings: TrackingSettings, out: Path, *, params: dict[str, str], history: list[dict[str, Any]], resume: bool,
) -> RunTrackers:
    """Open every tracker in tracking.report_to; each logs `params` and the rounds of `history` it lacks.

    `history` is metrics.jsonl (empty for a new run). On `resume` each tracker continues
    where it stopped (the MLflow run named in tracking.json). If one fails to open, those
    opened are released and the error is raised: nothing has trained yet.
    """
    saved = read_tracking_state(out) if resume else {}
    opened: list[Tracker] = []
    try:
        for name in settings.report_to:
            opened.append(OPENERS[name](settings, out, params=params, history=history, resume=resume,
                                        saved=saved.get(name, {})))
    except BaseException:
        for tracker in opened:
            tracker.abandon()
        raise
    if opened:  # trackers not named this time keep their entry, so naming one again later continues it
        write_tracking_state(out, {**saved, **{tracker.name: tracker.state() for tracker in opened}})
    return RunTrackers(opened)
