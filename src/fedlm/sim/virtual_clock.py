"""Simulated time: how long each client task would take on a fleet, drawn from the run seed.

A task's duration is its compute, `local_steps` x e^N(mu, sigma) seconds (a log-normal step time
drawn once per task: most tasks near the median e^mu, a heavy tail of slow ones as sigma grows), times
`slow_factor` for a slow client, plus `network_seconds` to fetch the global and send the update.
Which clients are slow is a seeded choice of round(slow_share x population) clients, fixed for
the run (a speed class of the device, not of the task). Each draw takes its own generator from
(run seed, client, task number), so a schedule depends on nothing but the seed and is the same
whatever order it is asked in.

The asynchronous engine (sim.async_engine) draws a duration per dispatch; `round_timing` times a
synchronous round on the same clock (the slowest of its cohort; under policy.kind = "quorum" the
quorum-th arrival or the deadline, whichever is first, leaving the clients still training out), so
every policy compares in simulated seconds. A round's timing depends only on the seed, its cohort
and its number, so a resumed run recomputes the time of the rounds it already ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fedlm.core.rng import make_rng
from fedlm.server.policy_settings import PolicySettings


def slow_clients(population: Sequence[str], *, share: float, seed: int) -> frozenset[str]:
    """The round(share x population) slow clients: a seeded choice, the same for every run with `seed`."""
    count = round(share * len(population))
    if count == 0:
        return frozenset()
    ordered = sorted(population)
    rng = make_rng(seed, "virtual-clock", "slow-clients")
    return frozenset(ordered[i] for i in rng.choice(len(ordered), count, replace=False))


def compute_seconds(settings: PolicySettings, *, seed: int, client_id: str, task: int, local_steps: int) -> float:
    """A fast client's compute time for its `task`-th task: `local_steps` steps at one log-normal step time.

    One draw per task, not per step: a device is slow for a whole task (busy, throttled), and a
    sum of per-step draws would average the heavy tail away.
    """
    rng = make_rng(seed, "virtual-clock", client_id, task)
    return local_steps * float(rng.lognormal(settings.compute_mu, settings.compute_sigma))


def task_seconds(
    settings: PolicySettings, *, seed: int, client_id: str, task: int, local_steps: int, slow: bool,
) -> float:
    """Virtual seconds from handing a client the global to receiving its update."""
    compute = compute_seconds(settings, seed=seed, client_id=client_id, task=task, local_steps=local_steps)
    return compute * (settings.slow_factor if slow else 1.0) + settings.network_seconds


def sync_round_seconds(
    settings: PolicySettings, *, seed: int, cohort: Iterable[str], round: int, local_steps: int, slow: frozenset[str],
) -> float:
    """A synchronous round waits for its slowest client: the longest task of the cohort (task number = round)."""
    longest = 0.0
    for client_id in cohort:
        seconds = task_seconds(settings, seed=seed, client_id=client_id, task=round, local_steps=local_steps,
                               slow=client_id in slow)
        longest = max(longest, seconds)
    return longest



@dataclass(frozen=True)
class RoundTiming:
    """When a synchronous round closes (simulated seconds after it opened) and who misses it."""

    seconds: float
    late: frozenset[str]


def round_timing(
    settings: PolicySettings, *, seed: int, cohort: Sequence[str], round: int, local_steps: int, slow: frozenset[str],
) -> RoundTiming:
    """"sync" waits for the slowest of its cohort. "quorum" closes at the `quorum`-th arrival or at `deadline_seconds`,
    whichever is first (but not before the first arrival), and its clients still training then are late.

    Task number = round, as `sync_round_seconds`; an empty cohort closes at once.
    """
    times = {c: task_seconds(settings, seed=seed, client_id=c, task=round, local_steps=local_steps, slow=c in slow)
             for c in cohort}
    if not times:
        return RoundTiming(0.0, frozenset())
    ordered = sorted(times.values())
    close = ordered[-1]
    if settings.kind == "quorum":
        if settings.quorum:
            close = min(close, ordered[min(settings.quorum, len(ordered)) - 1])
        if settings.deadline_seconds:
            close = min(close, max(settings.deadline_seconds, ordered[0]))
    return RoundTiming(close, frozenset(c for c, t in times.items() if t > close))


@dataclass
class RoundClock:
    """The simulated time of a run of synchronous rounds: each round's timing, and the time so far."""

    settings: PolicySettings
    seed: int
    local_steps: int
    slow: frozenset[str]
    now: float = 0.0

    def advance(self, cohort: Sequence[str], round: int) -> RoundTiming:
        timing = round_timing(self.settings, seed=self.seed, cohort=cohort, round=round, local_steps=self.local_steps,
                              slow=self.slow)
        self.now += timing.seconds
        return timing
