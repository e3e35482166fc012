"""The run directory: config snapshot, metrics.jsonl (a line a round), summary.json, adapter/ (and what tracking writes).

Lines hold numbers and counts only: never client text, never update contents.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedlm.config import RunConfig, SimulationSettings, config_to_dict, dump_config
from fedlm.tracking.settings import TrackingSettings
from fedlm.tracking.state import MLFLOW_DIR, TENSORBOARD_DIR, TRACKING_FILE

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ADAPTER_DIR = "adapter"
CLUSTER_ADAPTERS_DIR = "adapters"  # clusters.count > 1: adapters/<key>/, one PEFT dir per global (sim.clustered)
CHECKPOINT_DIR = "checkpoint"  # written by sim.checkpoint (which imports torch and dp-accounting; the CLI must not)
# what a run writes here, and a new run clears: tracking's files (tracking.json, event files, MLflow's store) included;
# a tracking.tensorboard_dir or tracking.mlflow_uri elsewhere is not cleared
RUN_FILES = (METRICS_FILE, SUMMARY_FILE, CONFIG_FILE, METRICS_FILE + ".tmp", SUMMARY_FILE + ".tmp",
             TRACKING_FILE, TRACKING_FILE + ".tmp")
RUN_DIRS = (ADAPTER_DIR, CLUSTER_ADAPTERS_DIR, CHECKPOINT_DIR, CHECKPOINT_DIR + ".old", CHECKPOINT_DIR + ".new", TENSORBOARD_DIR, MLFLOW_DIR)


def check_run_dir(path: Path, *, overwrite: bool = False) -> Path:
    """Refuse a path that is a file, or a directory holding a run unless `overwrite`; creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} exists and is not a directory")
    if (path / METRICS_FILE).exists() and not overwrite:
        raise ValueError(f"{path} already holds a run; choose another --out or pass --overwrite")
    return path


def make_run_dir(path: Path, *, overwrite: bool = False) -> Path:
    """Create the run directory (after `check_run_dir`).

    Every file and folder a previous run wrote there goes first, its checkpoint included, so
    that nothing of it can be resumed or mistaken for the new run's; other files are left alone.
    """
    path = check_run_dir(path, overwrite=overwrite)
    path.mkdir(parents=True, exist_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(path / name, ignore_errors=True)
        if (path / name).exists():
            raise ValueError(f"--overwrite could not remove {path / name}; remove it by hand")
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    return path


def run_identity(config: RunConfig) -> RunConfig:
    """The settings a resumed run must keep: all but federation.rounds (kept under banded_mf), how it executes on this machine
    ([simulation], model.device, model.threads, model.gradient_checkpointing) and where it is also reported
    ([tracking]), which are reset here."""
    model = replace(config.model, device="auto", threads=0, gradient_checkpointing=False)
    rounds = config.federation.rounds if config.privacy.mechanism == "banded_mf" else 1  # its factor spans the rounds
    return replace(config, federation=replace(config.federation, rounds=rounds), simulation=SimulationSettings(), model=model,
                   tracking=TrackingSettings())


def run_fingerprint(config: RunConfig) -> str:
    """A hash of the run's identity (`run_identity`), kept in its checkpoint: of the settings that differ from their
    defaults only, so a later fedlm that adds a setting (at a default that keeps today's behaviour) still resumes
    the run."""
    identity, defaults = config_to_dict(run_identity(config)), config_to_dict(RunConfig())
    changed = sorted((section, key, value) for section, values in identity.items() for key, value in values.items()
                     if defaults.get(section, {}).get(key, object()) != value)
    return hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_config(path: Path, config: RunConfig) -> None:
    (path / CONFIG_FILE).write_text(dump_config(config))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with (path / METRICS_FILE).open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    lines = (Path(path) / METRICS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    tmp = path / (SUMMARY_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path / SUMMARY_FILE)


def truncate_metrics(path: Path, rounds_done: int) -> None:
    """Drop metrics lines of rounds after `rounds_done` (a crash after the line, before the checkpoint)."""
    kept = [r for r in read_metrics(path) if r["round"] <= rounds_done] if (Path(path) / METRICS_FILE).exists() else []
    tmp = Path(path) / (METRICS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    os.replace(tmp, Path(path) / METRICS_FILE)
