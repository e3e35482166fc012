"""What trackers are given (flattened round numbers and config params), and how a failing tracker is dropped."""

from __future__ import annotations

import logging
import math

import pytest

from fedlm.config import ConfigError, RunConfig, apply_overrides
from fedlm.tracking.records import config_params, round_metrics
from fedlm.tracking.trackers import RunTrackers


def test_a_round_record_flattens_to_its_numbers_only():
    # Prepare: a record with nested numbers, text, None, a list and a bool
    record = {"round": 2, "train_loss": None, "eval": {"loss": 1.5, "kind": "held_out", "tokens": 124},
              "sites": {"site a?": {"loss": 2.25}}, "alerts": ["drift"], "clipped": True, "epsilon": math.inf}
    # Execute
    dotted, slashed = round_metrics(record, sep="."), round_metrics(record, sep="/")
    # Assert: numbers and bools only; the site id's "?" (not allowed in an MLflow name) became "_"
    assert dotted == {"round": 2.0, "eval.loss": 1.5, "eval.tokens": 124.0, "sites.site a_.loss": 2.25,
                      "clipped": 1.0, "epsilon": math.inf}
    assert set(slashed) == {"round", "eval/loss", "eval/tokens", "sites/site a_/loss", "clipped", "epsilon"}


def test_config_tables_flatten_to_section_key_params_as_text():
    # Prepare
    tables = {"model": {"name": "tiny", "target_modules": ["q_proj", "v_proj"], "r": 8, "load_in_4bit": False},
              "client": {"lr": 0.0005}}
    # Execute
    params = config_params(tables)
    # Assert: strings as they are, everything else as JSON
    assert params == {"model.name": "tiny", "model.target_modules": '["q_proj", "v_proj"]', "model.r": "8",
                      "model.load_in_4bit": "false", "client.lr": "0.0005"}


@pytest.mark.parametrize("report_to, problem", [(["wandb"], "unknown ['wandb']"), (["mlflow", "mlflow"], "names a tracker twice")])
def test_the_config_refuses_an_unknown_or_repeated_tracker(report_to, problem):
    # Execute / Assert
    with pytest.raises(ConfigError, match=r"tracking\.report_to") as err:
        apply_overrides(RunConfig(), {"tracking": {"report_to": report_to}})
    assert problem in str(err.value)


class FakeTracker:
    """Records the rounds it logs; raises at `fail_at`."""

    def __init__(self, name: str, fail_at: int = 0) -> None:
        self.name, self.fail_at, self.rounds, self.closed, self.abandoned = name, fail_at, [], None, False

    def log_round(self, record):
        if record["round"] == self.fail_at:
            raise ConnectionError("tracking server went away")
        self.rounds.append(record["round"])

    def close(self, status, artifacts):
        self.closed = status

    def abandon(self):
        self.abandoned = True


def test_a_tracker_that_fails_is_dropped_with_a_warning_and_the_others_go_on(caplog):
    # Prepare
    steady, flaky = FakeTracker("tensorboard"), FakeTracker("mlflow", fail_at=2)
    trackers = RunTrackers([steady, flaky])
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedlm.tracking.trackers"):
        for round in (1, 2, 3):
            trackers.log_round({"round": round, "eval": {"loss": 1.0}})
        trackers.close("completed")
    # Assert: the flaky one logged round 1, warned once, was released and never called again, not even to close
    assert steady.rounds == [1, 2, 3] and steady.closed == "completed"
    assert flaky.rounds == [1] and flaky.abandoned and flaky.closed is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "mlflow failed at round 2 (ConnectionError: tracking server went away)" in warnings[0]
