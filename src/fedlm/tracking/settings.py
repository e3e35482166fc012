"""The [tracking] table: which experiment trackers a run also writes to, and where."""

from __future__ import annotations

from dataclasses import dataclass

from fedlm.settings_checks import require

TRACKERS = ("tensorboard", "mlflow")


@dataclass(frozen=True)
class TrackingSettings:
    report_to: tuple[str, ...] = ()  # also write config and per-round metrics to "tensorboard" (event files) and/or "mlflow"
    tensorboard_dir: str = ""  # tensorboard: where event files go (relative to the working directory); "" = RUN_DIR/tensorboard
    mlflow_uri: str = ""  # mlflow: the tracking URI; "" = a SQLite store at RUN_DIR/mlruns/mlflow.db (artifacts beside it)
    experiment: str = "fedlm"  # mlflow: the experiment the run is logged under

    def __post_init__(self) -> None:
        unknown = [t for t in self.report_to if t not in TRACKERS]
        require(not unknown, "tracking.report_to", f"unknown {unknown}; known: {', '.join(TRACKERS)}")
        require(len(set(self.report_to)) == len(self.report_to), "tracking.report_to", "names a tracker twice")
        require(bool(self.experiment.strip()), "tracking.experiment", "must not be empty")
