"""client.lr_schedule: closed forms, agreement with transformers' schedulers, the round arithmetic, refusals."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from fedlm.client.schedule import DECAYS, lr_factor, round_lr_factors
from fedlm.config import ClientSettings, ConfigError


def transformers_factors(make, steps: int, **kwargs) -> list[float]:
    """The rate transformers' scheduler gives each of `steps` optimizer steps, for a base rate of 1."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = make(optimizer, **kwargs)
    factors = []
    for _ in range(steps):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


def test_warmup_step_k_runs_at_k_over_warmup_of_the_rate():
    # Execute / Assert: lr * k / warmup during warmup, for every schedule; the full rate once it ends.
    for schedule in ("constant", "linear", "cosine"):
        assert [lr_factor(k, total_steps=20, warmup_steps=4, schedule=schedule) for k in range(5)] == [0, 0.25, 0.5, 0.75, 1]


def test_cosine_half_way_is_the_mean_of_rate_and_floor_and_linear_falls_in_a_straight_line():
    # Execute / Assert: 100 steps, no warmup, floor 0.2: cosine at step 50 is (1 + 0.2) / 2; at 25, 0.2 + 0.8 * (1 + cos(pi/4)) / 2.
    assert lr_factor(50, total_steps=100, schedule="cosine", min_lr_ratio=0.2) == pytest.approx(0.6, abs=1e-15)
    assert lr_factor(25, total_steps=100, schedule="cosine", min_lr_ratio=0.2) == pytest.approx(
        0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2, abs=1e-15)
    # Linear: 1 - 0.8 * progress; with warmup 10 of 110 steps, step 60 is half way through the decay.
    assert lr_factor(60, total_steps=110, warmup_steps=10, schedule="linear", min_lr_ratio=0.2) == pytest.approx(0.6)
    assert lr_factor(0, total_steps=100, schedule="linear") == 1.0
    assert lr_factor(100, total_steps=100, schedule="linear", min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(99, total_steps=100, schedule="constant") == 1.0


@pytest.mark.parametrize("warmup", [0, 1, 7])
def test_the_factors_match_transformers_schedulers_step_for_step(warmup):
    # Prepare: 30 steps.
    total = 30
    cases = [
        ("constant", transformers_factors(get_constant_schedule_with_warmup, total, num_warmup_steps=warmup)),
        ("linear", transformers_factors(get_linear_schedule_with_warmup, total, num_warmup_steps=warmup,
                                        num_training_steps=total)),
        ("cosine", transformers_factors(get_cosine_schedule_with_warmup, total, num_warmup_steps=warmup,
                                        num_training_steps=total)),
    ]
    for schedule, expected in cases:
        # Execute
        ours = [lr_factor(k, total_steps=total, warmup_steps=warmup, schedule=schedule) for k in range(total)]
        # Assert
        assert ours == pytest.approx(expected, abs=1e-12), schedule


def test_a_round_takes_its_slice_of_the_runs_global_steps():
    # Prepare: 4 rounds of 3 local steps, warmup 2, cosine to a floor of 0.1.
    settings = ClientSettings(local_steps=3, lr_schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    whole_run = [lr_factor(k, total_steps=12, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1) for k in range(12)]
    # Execute
    rounds = [round_lr_factors(settings, round=r, rounds=4) for r in (1, 2, 3, 4)]
    # Assert: round r's steps are global steps (r - 1) * 3 .. (r - 1) * 3 + 2, the rounds together the whole run.
    assert rounds[1] == tuple(whole_run[3:6])
    assert [f for factors in rounds for f in factors] == whole_run
    assert rounds[0][:2] == (0.0, 0.5) and rounds[0][2] == 1.0


def test_the_default_leaves_the_rate_alone_and_warmup_alone_needs_no_run_length():
    # Execute / Assert: constant without warmup never touches the optimizer; constant warmup needs no rounds.
    assert round_lr_factors(ClientSettings(), round=7, rounds=None) is None
    assert round_lr_factors(ClientSettings(local_steps=2, warmup_steps=3), round=2, rounds=None) == (2 / 3, 1.0)


def test_a_decay_without_the_run_length_or_past_it_is_refused():
    settings = ClientSettings(lr_schedule="linear")
    with pytest.raises(ValueError, match=r"needs the run's number of rounds \(federation\.rounds\)"):
        round_lr_factors(settings, round=1, rounds=None)
    with pytest.raises(ValueError, match=r"round 5 is outside the schedule's 4 rounds"):
        round_lr_factors(settings, round=5, rounds=4)


@pytest.mark.parametrize(("values", "key"), [
    ({"lr_schedule": "step"}, "client.lr_schedule"),
    ({"warmup_steps": -1}, "client.warmup_steps"),
    ({"lr_schedule": "cosine", "min_lr_ratio": 1.5}, "client.min_lr_ratio"),
    ({"min_lr_ratio": 0.1}, "client.min_lr_ratio"),  # a floor for a rate that never decays
    ({"max_grad_norm": -1.0}, "client.max_grad_norm"),
    ({"grad_accumulation": 0}, "client.grad_accumulation"),
])
def test_bad_training_loop_settings_are_refused_naming_the_setting(values, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ClientSettings(**values)


def test_the_config_accepts_exactly_the_schedules_the_module_knows():
    assert all(ClientSettings(lr_schedule=name).lr_schedule == name for name in DECAYS)
