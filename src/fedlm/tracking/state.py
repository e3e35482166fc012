"""Where tracking writes inside a run directory, and what the run directory remembers of it: tracking.json.

tracking.json names each tracker's destination (the event directory; MLflow's tracking URI,
experiment and run id), so that `--resume` continues the same MLflow run. Which rounds a
tracker already holds is read back from the tracker itself when a run resumes, not kept here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TRACKING_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"  # RUN_DIR/tensorboard: the event files, unless tracking.tensorboard_dir says otherwise
MLFLOW_DIR = "mlruns"  # RUN_DIR/mlruns: MLflow's default store (mlflow.db) and artifacts/, unless tracking.mlflow_uri is set


def read_tracking_state(out: Path) -> dict[str, dict[str, Any]]:
    """{tracker: its saved state}; {} when the run directory has no tracking.json (or an unreadable one)."""
    try:
        state = json.loads((Path(out) / TRACKING_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


def write_tracking_state(out: Path, state: dict[str, dict[str, Any]]) -> None:
    tmp = Path(out) / (TRACKING_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, Path(out) / TRACKING_FILE)
