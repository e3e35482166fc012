"""What --resume may change: the number of rounds and how clients are executed, nothing else."""

from __future__ import annotations

import pytest

from fedlm.config import RunConfig, apply_overrides
from fedlm.sim.run import check_resume_config


def test_resume_may_add_rounds_and_switch_executor():
    saved = RunConfig()
    check_resume_config(saved, apply_overrides(saved, {"federation": {"rounds": 9},
                                                       "simulation": {"executor": "processes", "workers": 2}}))


@pytest.mark.parametrize("change", [{"client": {"lr": 0.1}}, {"federation": {"clients_per_round": 5}},
                                    {"secagg": {"enabled": True}, "strategy": {"clip_norm": 1.0, "weighting": "uniform"}}])
def test_resume_refuses_any_other_change(change):
    with pytest.raises(ValueError, match="--resume may change federation.rounds and"):
        check_resume_config(RunConfig(), apply_overrides(RunConfig(), change))


def test_resume_may_move_the_run_to_another_device_or_thread_count():
    saved = RunConfig()
    check_resume_config(saved, apply_overrides(saved, {"model": {"device": "cpu", "threads": 2, "gradient_checkpointing": True}}))
    with pytest.raises(ValueError, match="--resume may change federation.rounds and"):
        check_resume_config(saved, apply_overrides(saved, {"model": {"dtype": "bfloat16"}}))  # changes the arithmetic


def test_resume_keeps_the_rounds_of_a_decaying_learning_rate():
    saved = apply_overrides(RunConfig(), {"client": {"lr_schedule": "cosine"}})
    check_resume_config(saved, saved)  # the same rounds: the schedule is the one the run started
    with pytest.raises(ValueError, match="cannot change federation.rounds \\(4 -> 8\\) under client.lr_schedule = 'cosine'"):
        check_resume_config(saved, apply_overrides(saved, {"federation": {"rounds": 8}}))
    warmup = apply_overrides(RunConfig(), {"client": {"warmup_steps": 3}})
    check_resume_config(warmup, apply_overrides(warmup, {"federation": {"rounds": 8}}))  # warmup does not look at rounds
