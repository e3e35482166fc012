"""The TensorBoard writer on its own: what a resume reads back, and a shared event directory."""

from __future__ import annotations

import logging

from fedlm.tracking.settings import TrackingSettings
from fedlm.tracking.tensorboard_events import last_logged_round, open_tensorboard


def record(round: int) -> dict:
    return {"round": round, "eval": {"loss": 5.0 - round / 8}, "train_loss": None}


def test_a_resume_logs_only_the_rounds_the_event_files_lack(tmp_path):
    # Prepare: rounds 1 and 2 logged by a first process
    settings = TrackingSettings(report_to=("tensorboard",))
    first = open_tensorboard(settings, tmp_path, params={"federation.rounds": "3"}, history=[], resume=False, saved={})
    for round in (1, 2):
        first.log_round(record(round))
    first.close("interrupted", ())
    # Execute: a resume with metrics.jsonl's rounds 1-3
    resumed = open_tensorboard(settings, tmp_path, params={}, history=[record(1), record(2), record(3)], resume=True, saved={})
    resumed.close("completed", ())
    # Assert: round 3 added once, rounds 1-2 not repeated
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={TENSORS: 0})
    events.Reload()
    assert [e.step for e in events.Tensors("eval/loss")] == [1, 2, 3] and last_logged_round(tmp_path / "tensorboard") == 3
    assert "train_loss" not in events.Tags()["tensors"]  # None is not a number


def test_a_new_run_into_an_event_directory_that_holds_files_warns(tmp_path, caplog):
    # Prepare: a shared tensorboard_dir with another run's events
    settings = TrackingSettings(report_to=("tensorboard",), tensorboard_dir=str(tmp_path / "shared"))
    open_tensorboard(settings, tmp_path / "a", params={}, history=[record(1)], resume=False, saved={}).close("completed", ())
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedlm.tracking.tensorboard_events"):
        open_tensorboard(settings, tmp_path / "b", params={}, history=[], resume=False, saved={}).close("completed", ())
    # Assert: one warning naming the directory; no event files in either run directory
    assert [r.getMessage() for r in caplog.records] == [
        f"tracking.tensorboard_dir {tmp_path / 'shared'} already holds event files; TensorBoard shows them beside this "
        "run's. Give each run its own directory"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
