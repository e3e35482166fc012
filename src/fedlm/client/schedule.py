"""The client's learning rate across the whole run: warmup, then constant, linear or cosine decay.

A pure function of (round, local step, settings), so the simulation and `fedlm join`, which
both learn the round from the task, train at the same rate, and a resumed run picks up where
it stopped. The schedule runs over the run's global optimizer steps,
`(round - 1) * local_steps + step` (step counted from 0 within the round) out of
`rounds * local_steps`, as if one client trained through every round.

The formulas are those of transformers' `get_constant_schedule_with_warmup`,
`get_linear_schedule_with_warmup` and `get_cosine_schedule_with_warmup` (Loshchilov & Hutter
2017, "SGDR", arXiv:1608.03983, without restarts), including their step-0 convention: with
warmup the first step's rate is 0. The floor `min_lr_ratio` follows transformers' cosine
lambda (`factor * (1 - floor) + floor`), applied to linear decay too. Written here rather than
taken from transformers because its schedulers are stateful `LambdaLR` objects bound to one
optimizer, while a client builds a fresh optimizer every round and needs only the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fedlm.config import ClientSettings

Decay = Callable[[float], float]  # progress through the decay, 0 -> 1, to a factor, 1 -> 0


def linear_decay(progress: float) -> float:
    return max(0.0, 1.0 - progress)


def cosine_decay(progress: float) -> float:
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


DECAYS: dict[str, Decay | None] = {"constant": None, "linear": linear_decay, "cosine": cosine_decay}


def lr_factor(step: int, *, total_steps: int, warmup_steps: int = 0, schedule: str = "constant",
              min_lr_ratio: float = 0.0) -> float:
    """The share of the base learning rate at global optimizer step `step` (from 0) of `total_steps`."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    decay = DECAYS[schedule]
    if decay is None:
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return decay(progress) * (1.0 - min_lr_ratio) + min_lr_ratio


def needs_rounds(settings: ClientSettings) -> bool:
    """Whether the schedule depends on the run's length (decay does; warmup alone does not)."""
    return DECAYS[settings.lr_schedule] is not None


def round_lr_factors(settings: ClientSettings, *, round: int, rounds: int | None) -> tuple[float, ...] | None:
    """The factors of this round's `local_steps` optimizer steps; None where the rate never moves (the default).

    `rounds` (federation.rounds) is needed for linear and cosine decay; ValueError without it,
    or for a round past it, rather than a silently wrong rate.
    """
    if settings.lr_schedule == "constant" and settings.warmup_steps == 0:
        return None
    if needs_rounds(settings):
        if rounds is None:
            raise ValueError(f"client.lr_schedule = {settings.lr_schedule!r} needs the run's number of rounds "
                             "(federation.rounds); the caller passed none")
        if not 1 <= round <= rounds:
            raise ValueError(f"round {round} is outside the schedule's {rounds} rounds (federation.rounds)")
    steps = settings.local_steps
    total = (rounds or round) * steps
    first = (round - 1) * steps
    return tuple(lr_factor(first + k, total_steps=total, warmup_steps=settings.warmup_steps,
                           schedule=settings.lr_schedule, min_lr_ratio=settings.min_lr_ratio) for k in range(steps))
