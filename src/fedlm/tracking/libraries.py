"""The tracking libraries, imported only when tracking.report_to names them, with a clear error when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from fedlm.tracking.settings import TrackingSettings

EXTRA = "pip install 'fedlm[tracking]'"

# The modules each tracker imports. MLflow's default store here is SQLite, which mlflow-skinny
# reaches through SQLAlchemy and alembic (see mlflow_run.py); a tracking server needs neither.
TRACKER_MODULES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow",)}
SQL_STORE_MODULES = ("sqlalchemy", "alembic")


class TrackerNotInstalled(ValueError):
    """tracking.report_to names a tracker whose library is not installed (a ValueError: the CLI prints it, exit 2)."""


def import_library(tracker: str, module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = err.name or module
        raise TrackerNotInstalled(f"tracking.report_to names {tracker!r}, which needs the Python package {missing!r} "
                                  f"(not installed): {EXTRA}") from err


def needs_sql_store(settings: TrackingSettings) -> bool:
    """True when MLflow logs to a database file: the default store, or a tracking URI such as sqlite:///..."""
    scheme = settings.mlflow_uri.split(":", 1)[0] if ":" in settings.mlflow_uri else ""
    return not settings.mlflow_uri or scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql")


def check_installed(settings: TrackingSettings) -> None:
    """Import every library the named trackers need, before the run loads a model; TrackerNotInstalled names the extra."""
    for tracker in settings.report_to:
        modules = TRACKER_MODULES[tracker] + (SQL_STORE_MODULES if tracker == "mlflow" and needs_sql_store(settings) else ())
        for module in modules:
            import_library(tracker, module)
