"""Monitoring through the real simulation on the tiny model: a planted poisoned client and a planted data switch
raise their alerts, honest runs raise none, secure aggregation and DP publish no per-client figure, resume agrees."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from fedlm.config import apply_overrides, config_from_dict
from fedlm.data.blocks import Blocks
from fedlm.monitoring.history import history_from_records
from fedlm.monitoring.review import UNDER_DP, UNDER_SECAGG
from fedlm.sim import engine
from fedlm.sim.cohort import SerialExecutor
from fedlm.sim.engine import simulate
from fedlm.sim.setup import prepare
from fedlm.sim.trainers import make_lora_trainer

BASE = config_from_dict({
    "model": {"name": "tiny"},
    "data": {"seq_len": 64},
    "federation": {"rounds": 3, "clients_per_round": 5},
    "client": {"local_steps": 3, "batch_size": 2, "lr": 5e-3},
    "eval": {"clients": 2, "max_sequences": 8},
})
PER_CLIENT_KINDS = {"outlier_update", "opposed_update"}


class AlteringExecutor:
    """The serial executor, except that `change(sim, job, update)` alters what a client sends, and the jobs
    `drops(job)` picks are reported as dropouts instead of trained."""

    def __init__(self, sim, trainer, change, drops) -> None:
        self.sim, self.trainer, self.change, self.drops = sim, trainer, change, drops
        self.buffer = np.empty(sim.adapter.shared_spec.size, np.float32)

    def run(self, jobs, global_vector, sink) -> None:
        for job in jobs:
            sink.started(job)
            if self.drops(job):
                sink.failed(job, "dropped out")
            else:
                sink.delivered(job, self.change(self.sim, job, self.trainer(job, global_vector, self.buffer)))

    def close(self) -> None:
        pass


def with_trainer(monkeypatch, change, drops=lambda job: False):
    """Every client trains for real on the run's one model; what it sends is then changed, or it drops out."""

    def make_executor(sim, reporter):
        return AlteringExecutor(sim, make_lora_trainer(sim, on_step=reporter.step_done), change, drops)

    monkeypatch.setattr(engine, "make_sim_executor", make_executor)


def poison(client: str, scale: float):
    def change(sim, job, update):
        if job.task.client_id == client:
            np.multiply(update.vector, -scale, out=update.vector)  # sign-flipped and scaled, in the trainer's buffer
        return update

    return change


def first_cohort(config) -> tuple[str, ...]:
    sim = prepare(config)
    return engine.sample_cohort(sim, 1)


def test_a_poisoned_client_raises_outlier_and_opposed_alerts_naming_it_and_no_one_else(monkeypatch, caplog):
    # Prepare: the first client of round 1's cohort sends its update sign-flipped and ten times larger
    config = apply_overrides(BASE, {"federation": {"rounds": 3}})
    poisoned = first_cohort(config)[0]
    with_trainer(monkeypatch, poison(poisoned, 10.0))
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedlm.sim.engine"):
        result = simulate(prepare(config))
    # Assert: both per-client alerts in every round it took part in, each naming it, with value and threshold
    in_rounds = [r["round"] for r in result.records if any(a.get("client") == poisoned for a in r["alerts"])]
    assert 1 in in_rounds
    for record in result.records:
        kinds = {a["kind"] for a in record["alerts"] if a.get("client") == poisoned}
        assert kinds == (PER_CLIENT_KINDS if record["round"] in in_rounds else set())
        assert all(a.get("client") in (None, poisoned) for a in record["alerts"])
    round_one = {a["kind"]: a for a in result.records[0]["alerts"]}
    assert round_one["outlier_update"]["value"] > 20 and round_one["outlier_update"]["threshold"] == 3.5
    assert round_one["opposed_update"]["value"] < -0.5 and round_one["opposed_update"]["threshold"] == -0.2
    monitor = result.records[0]["monitor"]
    assert monitor["per_client"] and monitor["updates"] == 5
    assert monitor["norm"]["max"] > 8 * monitor["norm"]["median"] and monitor["cosine"]["min"] < -0.5
    assert monitor["alerts"] == len(result.records[0]["alerts"])
    # one warning line per alert, naming the kind, the client and the threshold
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("monitoring alert")]
    assert len(lines) == sum(len(r["alerts"]) for r in result.records)
    assert any(f"outlier_update: round 1 client {poisoned}" in line and "threshold 3.5" in line for line in lines)


def with_data_switch(monkeypatch, from_round: int):
    """A data switch: from `from_round` on, every client trains on uniformly random byte tokens instead of the plays."""

    def make_executor(sim, reporter):
        train = make_lora_trainer(sim, on_step=reporter.step_done)

        def switched(job, global_vector, out):
            if job.task.round >= from_round:
                shape = sim.train_blocks(job.task.client_id).input_ids.shape
                ids = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(job.task.round))
                sim.train_cache[job.task.client_id] = Blocks(ids, ids.clone())
            return train(job, global_vector, out)

        return SerialExecutor(switched, sim.adapter.shared_spec.size)

    monkeypatch.setattr(engine, "make_sim_executor", make_executor)


# Rounds 6 on are judged (warmup 5); the data switches at round 11, once the early rounds' steep fall in train loss
# is a minority of the reference (switching at round 7, four of six seeds raised drift, at z 5.0 to 7.8; at round
# 11, all six seeds did, at z 9.5 to 10.2)
DRIFT_RUN = apply_overrides(BASE, {"federation": {"rounds": 12}})
SWITCH_ROUND = 11


def test_a_cohort_whose_data_switches_mid_run_raises_drift_and_not_before(monkeypatch):
    # Prepare
    with_data_switch(monkeypatch, from_round=SWITCH_ROUND)
    # Execute
    result = simulate(prepare(DRIFT_RUN))
    # Assert: nothing at all in the ten rounds on the plays (rounds 6 to 10 judged), then train-loss drift
    before, switched = result.records[: SWITCH_ROUND - 1], result.records[SWITCH_ROUND - 1]
    assert [r["alerts"] for r in before] == [[]] * (SWITCH_ROUND - 1)
    drift = [a for a in switched["alerts"] if a["kind"] == "drift"]
    assert [a["metric"] for a in drift] == ["train_loss"]
    assert drift[0]["value"] > 8.0 and drift[0]["threshold"] == 4.0 and drift[0]["round"] == SWITCH_ROUND
    assert switched["train_loss"] > max(r["train_loss"] for r in before)


def test_a_resumed_run_judges_its_rounds_as_the_uninterrupted_run_did(monkeypatch):
    # Prepare: the drift run, and its state and metrics after round 8
    with_data_switch(monkeypatch, from_round=SWITCH_ROUND)
    states = []
    full = simulate(prepare(DRIFT_RUN), on_record=lambda record, state: states.append(state))
    # Execute: resume after round 8 with the history rebuilt from the first eight metrics lines (as run.py reads them)
    resumed = simulate(prepare(DRIFT_RUN), start=states[7], monitor_history=history_from_records(full.records[:8]))
    # Assert: the same monitors and alerts, the drift alert of the switch included
    assert [r["round"] for r in resumed.records] == [9, 10, 11, 12]
    assert [(r["monitor"], r["alerts"]) for r in resumed.records] == [(r["monitor"], r["alerts"]) for r in full.records[8:]]
    assert any(a["kind"] == "drift" for a in resumed.records[SWITCH_ROUND - 9]["alerts"])


@pytest.mark.parametrize("seed", [1, 2])
def test_honest_runs_raise_no_alert_with_the_default_thresholds(seed):
    # Execute
    result = simulate(prepare(apply_overrides(BASE, {"run": {"seed": seed}, "federation": {"rounds": 8}})))
    # Assert
    assert [r["alerts"] for r in result.records] == [[]] * 8
    assert all(r["monitor"]["per_client"] and r["monitor"]["cosine"]["min"] > 0 for r in result.records)


def test_under_secure_aggregation_the_monitor_says_per_client_figures_are_unavailable():
    # Prepare
    config = apply_overrides(BASE, {"secagg": {"enabled": True}, "federation": {"rounds": 2, "clients_per_round": 3},
                                    "strategy": {"clip_norm": 1.0, "weighting": "uniform"},
                                    "monitoring": {"participation_drop": 1.0}})
    # Execute
    result = simulate(prepare(config))
    # Assert: no norm or cosine, no client named; the aggregate checks still ran (participation: all 3 of 3 arrived)
    for record in result.records:
        assert record["monitor"] == {"per_client": False, "unavailable": UNDER_SECAGG, "alerts": 0}
        assert record["alerts"] == [] and record["accepted"] == 3


def test_under_dp_no_per_client_figure_reaches_metrics_or_logs_and_aggregate_checks_stay(monkeypatch, caplog):
    # Prepare: central DP; the first client of each cohort sign-flips its (clipped) update, and all but the first
    # two clients drop out, so 2 of 5 arrive: participation_drop, an aggregate check, still fires
    config = apply_overrides(BASE, {"strategy": {"clip_norm": 1.0, "weighting": "uniform"},
                                    "privacy": {"noise_multiplier": 0.5}, "federation": {"rounds": 2}})
    poisoned = first_cohort(config)[0]
    with_trainer(monkeypatch, poison(poisoned, 1.0), drops=lambda job: job.index >= 2)
    sim = prepare(config)
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedlm.sim.engine"):
        result = simulate(sim)
    # Assert
    assert engine.monitoring_sketcher(sim) is None  # no update is even sketched
    for record in result.records:
        assert record["accepted"] == 2 and record["failed"] == 3
        assert record["monitor"] == {"per_client": False, "unavailable": UNDER_DP, "alerts": 1}
        assert [(a["kind"], a["value"], a["threshold"]) for a in record["alerts"]] == [("participation_drop", 0.4, 0.5)]
        assert all("client" not in a for a in record["alerts"])
    monitoring_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("monitoring alert")]
    assert len(monitoring_lines) == 2 and not any(poisoned in line for line in monitoring_lines)
