"""An MLflow run for a simulation: the config as params, each round's numbers as metrics at step = round, the final
adapter (with config.toml and summary.json) as artifacts, and the run's end as its status.

Where: tracking.mlflow_uri when set (a tracking server, or any store URI MLflow takes), else a
SQLite store inside the run directory, RUN_DIR/mlruns/mlflow.db, with artifacts in
RUN_DIR/mlruns/artifacts. Not a `file:` store: MLflow 3 keeps the file store in maintenance
mode and refuses it unless MLFLOW_ALLOW_FILE_STORE=true is set; SQLite is its recommended
local backend and opens as it is with `mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlruns/mlflow.db`.

Resume: tracking.json keeps the run id; a resumed simulation with the same URI and experiment
reopens that MLflow run, logs the rounds it lacks (the metric history of "round" says which)
and goes on. Params keep the values they were first logged with (MLflow params are immutable);
config.toml among the artifacts is the final one.

Telemetry: MLflow reports anonymous usage to its developers unless told not to. A privacy
framework should not phone home on a user's behalf: fedlm sets MLFLOW_DISABLE_TELEMETRY=true
before MLflow is imported, unless the user has set that variable themselves.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedlm.tracking.libraries import import_library, needs_sql_store
from fedlm.tracking.records import round_metrics
from fedlm.tracking.settings import TrackingSettings
from fedlm.tracking.state import MLFLOW_DIR

MLFLOW_STATUS = {"completed": "FINISHED", "budget_exhausted": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000  # MLflow's limits for one log_batch
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"


def default_store(out: Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of the store inside the run directory."""
    root = (Path(out) / MLFLOW_DIR).resolve()
    return f"sqlite:///{root / DB_FILE}", (root / ARTIFACTS_DIR).as_uri()


def make_client(settings: TrackingSettings, out: Path) -> tuple[Any, str | None]:
    """An MlflowClient on the run's store, and the artifact location for a new experiment (None: the server's choice)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # see the module docstring; the user's own setting wins
    import_library("mlflow", "mlflow")
    if needs_sql_store(settings):
        import_library("mlflow", "alembic")
    from mlflow.tracking import MlflowClient

    if settings.mlflow_uri:
        uri, artifacts = settings.mlflow_uri, None
    else:
        (Path(out) / MLFLOW_DIR).mkdir(parents=True, exist_ok=True)
        uri, artifacts = default_store(out)
    with warnings.catch_warnings():
        # MLflow's SQL store configures a loader that SQLAlchemy 2.1 deprecates; nothing a fedlm user can change
        warnings.filterwarnings("ignore", message=".*noload.*loader strategy is deprecated")
        return MlflowClient(tracking_uri=uri), artifacts


def experiment_id(client: Any, name: str, artifacts: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name, artifact_location=artifacts)


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    """The params the run does not hold yet (a resumed run keeps its first values: MLflow refuses changing one)."""
    from mlflow.entities import Param

    held = client.get_run(run_id).data.params
    new = [Param(key, value) for key, value in params.items() if key not in held]
    for batch in batches(new, PARAMS_PER_BATCH):
        client.log_batch(run_id, params=batch)


def last_logged_round(client: Any, run_id: str) -> int:
    return int(max((m.step for m in client.get_metric_history(run_id, "round")), default=0))


def continued_run(client: Any, settings: TrackingSettings, saved: dict[str, Any]) -> str | None:
    """The saved run's id when this resume logs to the same store and experiment and the run is still there."""
    if not saved.get("run_id") or (saved.get("uri"), saved.get("experiment")) != (settings.mlflow_uri, settings.experiment):
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(saved["run_id"])
    except MlflowException:
        return None
    return run.info.run_id if run.info.lifecycle_stage == "active" else None


class MlflowTracker:
    """One MLflow run, logged through MlflowClient (no global mlflow state: the active run, the tracking URI)."""

    name = "mlflow"

    def __init__(self, client: Any, run_id: str, settings: TrackingSettings) -> None:
        self.client, self.run_id, self.settings = client, run_id, settings

    def log_round(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(record["round"])
        metrics = [Metric(key, value, now, step) for key, value in round_metrics(record, sep=".").items()]
        for batch in batches(metrics, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch)

    def state(self) -> dict[str, Any]:
        return {"uri": self.settings.mlflow_uri, "experiment": self.settings.experiment, "run_id": self.run_id}

    def close(self, status: str, artifacts: tuple[Path, ...]) -> None:
        for path in artifacts:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_tag(self.run_id, "fedlm.status", status)
        self.client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(status, "FAILED"))

    def abandon(self) -> None:
        """Dropped (this tracker failed mid-run, or another one failed to open): the MLflow run is marked FAILED so it
        does not stay RUNNING; `--resume` reopens it. A store that cannot be reached is left as it is."""
        try:
            self.client.set_terminated(self.run_id, status="FAILED")
        except Exception:  # noqa: BLE001 - the store is what failed; the run directory keeps every round
            pass


def open_mlflow(
    settings: TrackingSettings, out: Path, *, params: dict[str, str], history: list[dict[str, Any]], resume: bool,
    saved: dict[str, Any],
) -> MlflowTracker:
    """An MLflow run (on resume, the saved one reopened) that holds the config and every round of `history`."""
    client, artifacts = make_client(settings, out)
    run_id = continued_run(client, settings, saved) if resume else None
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
    else:
        run = client.create_run(experiment_id(client, settings.experiment, artifacts), run_name=Path(out).resolve().name,
                                tags={"fedlm.run_dir": str(Path(out).resolve())})
        run_id = run.info.run_id
    log_params(client, run_id, params)
    tracker, logged = MlflowTracker(client, run_id, settings), last_logged_round(client, run_id)
    for record in history:
        if record["round"] > logged:
            tracker.log_round(record)
    return tracker
