"""A tiny simulation with report_to = ["tensorboard", "mlflow"], read back with TensorBoard's and MLflow's own readers."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from fedlm.config import RunConfig, apply_overrides
from fedlm.sim.rundir import read_metrics
from fedlm.sim.run import run_simulation
from fedlm.tracking.libraries import TrackerNotInstalled
from fedlm.tracking.mlflow_run import MlflowTracker
from fedlm.tracking.tensorboard_events import TensorBoardTracker

TINY = {"model": {"name": "tiny"}, "data": {"seq_len": 32}, "eval": {"clients": 2, "max_sequences": 4},
        "client": {"local_steps": 1, "batch_size": 2}}
BOTH = ["tensorboard", "mlflow"]


def config(rounds: int, report_to: list[str] = BOTH) -> RunConfig:
    return apply_overrides(RunConfig(), {**TINY, "federation": {"clients_per_round": 2, "rounds": rounds},
                                         "tracking": {"report_to": report_to}})


def numeric_leaves(record: dict, sep: str, prefix: str = "") -> dict[str, float]:
    """The test's own reading of a metrics line: every number (nested keys joined by `sep`), nothing else."""
    leaves: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{sep}{key}" if prefix else key
        if isinstance(value, dict):
            leaves.update(numeric_leaves(value, sep, name))
        elif isinstance(value, int | float):
            leaves[name] = float(value)
    return leaves


def expected_series(out: Path, sep: str) -> dict[str, list[tuple[int, float]]]:
    """{name: [(round, value), ...]} as metrics.jsonl holds them."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics(out):
        for name, value in numeric_leaves(record, sep).items():
            series.setdefault(name, []).append((record["round"], value))
    return series


def tensorboard_series(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir), size_guidance={TENSORS: 0})
    events.Reload()
    return {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in events.Tensors(tag)]
            for tag in events.Tags()["tensors"] if not tag.startswith("_hparams_")}


def tensorboard_hparams(log_dir: Path) -> dict[str, str]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {key: value.string_value for key, value in start.hparams.items()}


def mlflow_run(out: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlruns' / 'mlflow.db').resolve()}")
    run_id = json.loads((out / "tracking.json").read_text())["mlflow"]["run_id"]
    return client, client.get_run(run_id)


def mlflow_series(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics}


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tracked") / "run"
    run_simulation(config(3), out)
    return out


def test_every_round_in_tensorboard_equals_metrics_jsonl(three_rounds):
    # Prepare
    expected = expected_series(three_rounds, sep="/")
    # Execute
    logged = tensorboard_series(three_rounds / "tensorboard")
    # Assert: the same tags, the same (round, value) pairs in double precision
    assert logged == expected
    assert [step for step, _ in logged["eval/loss"]] == [1, 2, 3] and "train_loss" in logged and "bytes_up" in logged
    assert tensorboard_hparams(three_rounds / "tensorboard")["federation.rounds"] == "3"


def test_the_mlflow_run_holds_every_round_the_config_and_the_adapter(three_rounds, tmp_path):
    # Prepare: the expected params, read from config.toml by the test
    tables = tomllib.loads((three_rounds / "config.toml").read_text())
    expected_params = {f"{section}.{key}": value if isinstance(value, str) else json.dumps(value)
                       for section, values in tables.items() for key, value in values.items()}
    # Execute
    client, run = mlflow_run(three_rounds)
    # Assert: metrics round by round, params, status, and the adapter byte for byte
    assert mlflow_series(client, run) == expected_series(three_rounds, sep=".")
    assert run.data.params == expected_params
    assert run.data.params["federation.rounds"] == "3" and run.data.params["tracking.report_to"] == '["tensorboard", "mlflow"]'
    assert run.info.status == "FINISHED" and run.data.tags["fedlm.status"] == "completed"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"adapter", "config.toml", "summary.json"}
    weights = client.download_artifacts(run.info.run_id, "adapter/adapter_model.safetensors", str(tmp_path))
    assert Path(weights).read_bytes() == (three_rounds / "adapter" / "adapter_model.safetensors").read_bytes()


def failing_in_round(tracker: type, round: int, monkeypatch) -> None:
    """`tracker`'s log_round raises in `round`, as a tracking server that went away or a full disk would."""
    original = tracker.log_round

    def log_round(self, record):
        if record["round"] == round:
            raise ConnectionError("tracking server went away")
        original(self, record)

    monkeypatch.setattr(tracker, "log_round", log_round)


def test_resume_continues_the_same_mlflow_run_and_event_dir_after_the_trackers_failed(tmp_path, caplog, monkeypatch):
    # Prepare: MLflow fails in round 2 of a 3-round run, TensorBoard in round 3
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        failing_in_round(MlflowTracker, 2, patch)
        failing_in_round(TensorBoardTracker, 3, patch)
        # Execute: the run goes on without them
        with caplog.at_level(logging.WARNING):
            summary = run_simulation(config(3), out)
    # Assert: a complete run, a warning each; MLflow holds round 1 (still RUNNING: never closed), TensorBoard rounds 1-2
    assert summary["status"] == "completed" and [r["round"] for r in read_metrics(out)] == [1, 2, 3]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "tracking:" in r.getMessage()]
    assert len(warnings) == 2 and "mlflow failed at round 2" in warnings[0] and "tensorboard failed at round 3" in warnings[1]
    client, run = mlflow_run(out)
    assert mlflow_series(client, run)["round"] == [(1, 1.0)] and run.info.status == "FAILED"  # dropped: not left RUNNING
    assert tensorboard_series(out / "tensorboard")["round"] == [(1, 1.0), (2, 2.0)]
    # Execute: resume to 4 rounds with both working again
    run_simulation(config(4), out, resume=True)
    # Assert: the same MLflow run, rounds 2-4 filled in once each; the event dir has rounds 1-4 once each
    client, resumed = mlflow_run(out)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert mlflow_series(client, resumed) == expected_series(out, sep=".")
    assert [step for step, _ in mlflow_series(client, resumed)["round"]] == [1, 2, 3, 4]
    assert tensorboard_series(out / "tensorboard") == expected_series(out, sep="/")
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_a_tracker_named_first_at_resume_gets_the_earlier_rounds_from_metrics_jsonl(tmp_path):
    # Prepare: two rounds reported nowhere
    out = tmp_path / "run"
    run_simulation(config(2, []), out)
    # Execute: resume to 3 rounds with TensorBoard ([tracking] may change on resume)
    run_simulation(config(3, ["tensorboard"]), out, resume=True)
    # Assert: rounds 1 and 2 come from metrics.jsonl, round 3 as it ran; one value each
    logged = tensorboard_series(out / "tensorboard")
    assert logged == expected_series(out, sep="/") and [step for step, _ in logged["round"]] == [1, 2, 3]


@pytest.mark.parametrize("tracker, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("mlflow", "alembic")])
def test_a_missing_tracking_library_stops_the_run_before_it_starts_naming_the_extra(tmp_path, monkeypatch, tracker, module):
    # Prepare: the library cannot be imported
    monkeypatch.setitem(sys.modules, module, None)
    # Execute / Assert
    with pytest.raises(TrackerNotInstalled) as err:
        run_simulation(config(1, [tracker]), tmp_path / "run")
    assert f"tracking.report_to names {tracker!r}" in str(err.value) and repr(module) in str(err.value)
    assert "pip install 'fedlm[tracking]'" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_overwrite_clears_what_tracking_wrote_in_the_run_dir(three_rounds, tmp_path):
    # Prepare: a copy of the tracked run
    out = tmp_path / "run"
    shutil.copytree(three_rounds, out)
    # Execute: a new run without trackers over it
    run_simulation(config(1, []), out, overwrite=True)
    # Assert
    assert not (out / "tensorboard").exists() and not (out / "mlruns").exists() and not (out / "tracking.json").exists()
    assert [r["round"] for r in read_metrics(out)] == [1]
