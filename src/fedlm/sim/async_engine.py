"""The asynchronous simulation: FedBuff on a virtual clock, in one process.

Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation", arXiv:2106.06639.
`policy.concurrency` clients train at once. A client is dispatched with the current global version
and trains on it right away, on the simulation's one model (the serial executor's trainer,
sim.trainers); its encoded update is then held until its virtual finish time (sim.virtual_clock),
so completions are processed in virtual-time order while real time is spent only on training.
Holding the updates costs concurrency x P float32s (P: the update's size), preallocated once,
besides the buffer's one accumulator (fedlm.server.buffered). Each completion is folded into the
buffer (or refused, past policy.max_staleness); every policy.buffer_size updates the server steps
into a new version, which is evaluated every policy.eval_every steps and written as one metrics
line. A freed slot goes to a client picked uniformly (seeded by the dispatch number) among those
not training and not already started from the current version (a device does not fetch the same
global twice). The run ends after federation.rounds steps; updates still in flight are dropped.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedlm.core.rng import make_rng
from fedlm.core.types import Task, Update
from fedlm.eval.sites import site_summary
from fedlm.privacy.release import reported_sum
from fedlm.server.buffered import Aggregation, BufferedState, StaleUpdate, accept_stale, buffer_policy, new_buffer
from fedlm.server.policy_settings import check_policy_combinations
from fedlm.server.rounds import ServerState, initial_state
from fedlm.sim.cohort import Trainer, make_jobs
from fedlm.sim.engine import RunResult, evaluate_global, privacy_fields
from fedlm.sim.events import Reporter, SilentReporter
from fedlm.sim.setup import Simulation
from fedlm.sim.threads import single_thread_blas
from fedlm.sim.trainers import make_lora_trainer
from fedlm.sim.virtual_clock import slow_clients, task_seconds
from fedlm.updates import wire

log = logging.getLogger(__name__)


@dataclass(order=True)
class InFlight:
    """A client's finished training, held until its virtual finish time."""

    finish: float  # virtual seconds since the run began
    dispatch: int  # the dispatch number: unique, so ties in time go in dispatch order
    update: Update = field(compare=False)  # its vector is one of the fleet's preallocated buffers


@dataclass
class Fleet:
    """The clients as the event loop sees them: who is training, until when, and the virtual time now."""

    population: tuple[str, ...]
    slow: frozenset[str]
    free: list[np.ndarray]  # update buffers not in flight: concurrency x P floats in all
    in_flight: list[InFlight] = field(default_factory=list)  # a heap by finish time
    last_start: dict[str, int] = field(default_factory=dict)  # the version each client last started from
    now: float = 0.0
    dispatched: int = 0
    refused: int = 0  # updates refused past policy.max_staleness, over the whole run


@dataclass
class Tally:
    """What happened since the last aggregation, for its metrics line."""

    refused: int = 0
    dispatched: int = 0
    started: float = field(default_factory=time.perf_counter)  # wall clock


def make_fleet(sim: Simulation) -> Fleet:
    """The training population, its slow clients, and `policy.concurrency` update buffers."""
    policy, population = sim.config.policy, tuple(sorted(sim.population))
    needed = max(policy.concurrency, policy.buffer_size)
    if len(population) < needed:
        raise ValueError(f"policy.concurrency = {policy.concurrency} and policy.buffer_size = {policy.buffer_size} need "
                         f"at least {needed} training clients; this run has {len(population)}")
    size = sim.adapter.shared_spec.size
    return Fleet(population, slow_clients(population, share=policy.slow_share, seed=sim.config.run.seed),
                 [np.empty(size, np.float32) for _ in range(policy.concurrency)])


def idle_clients(fleet: Fleet, version: int) -> list[str]:
    """Clients that may be dispatched now: not training, and not already started from `version`."""
    busy = {arrival.update.client_id for arrival in fleet.in_flight}
    return [c for c in fleet.population if c not in busy and fleet.last_start.get(c) != version]


def dispatch(sim: Simulation, fleet: Fleet, server: ServerState, client_id: str, trainer: Trainer,
             private: dict[str, np.ndarray], reporter: Reporter) -> None:
    """Hand `client_id` the global of `server`, train it now, and hold its update until its virtual finish."""
    fleet.dispatched += 1
    task = Task(round=server.version + 1, version=server.version, client_id=client_id, clip_norm=server.clip_norm)
    residuals = sim.residuals if sim.config.compression.sparsify == "top_k" else None
    job = make_jobs([task], private, sim.adapter.initial_private, residuals, server.global_vector.size)[0]
    job = replace(job, index=fleet.dispatched)
    reporter.client_started(task.round, job.index, sim.config.client.local_steps)
    update = trainer(job, server.global_vector, fleet.free.pop())
    seconds = task_seconds(sim.config.policy, seed=sim.config.run.seed, client_id=client_id, task=fleet.dispatched,
                           local_steps=sim.config.client.local_steps, slow=client_id in fleet.slow)
    fleet.last_start[client_id] = server.version
    heapq.heappush(fleet.in_flight, InFlight(fleet.now + seconds, fleet.dispatched, update))


def refill(sim: Simulation, fleet: Fleet, server: ServerState, trainer: Trainer, private: dict[str, np.ndarray],
           reporter: Reporter, tally: Tally) -> None:
    """Dispatch clients until `policy.concurrency` train or no client may start."""
    while fleet.free:
        idle = idle_clients(fleet, server.version)
        if not idle:
            return
        pick = make_rng(sim.config.run.seed, "fedbuff-dispatch", fleet.dispatched + 1).integers(len(idle))
        dispatch(sim, fleet, server, idle[int(pick)], trainer, private, reporter)
        tally.dispatched += 1


def receive(fleet: Fleet, buffer: BufferedState, tally: Tally, reporter: Reporter) -> Aggregation | None:
    """Advance the clock to the next finish and offer that update to the buffer; the server step it caused, if any."""
    arrival = heapq.heappop(fleet.in_flight)
    fleet.now = arrival.finish
    filling = buffer.server.rounds_done + 1  # the server step this buffer fills
    try:
        step = accept_stale(buffer, arrival.update)
    except StaleUpdate:
        tally.refused += 1
        fleet.refused += 1
        return None
    finally:
        fleet.free.append(arrival.update.vector)  # folded or refused: its buffer is free again
    reporter.client_done(filling, arrival.dispatch)
    return step


def spread(values: tuple[int, ...]) -> dict[str, float]:
    return {"min": float(min(values)), "mean": float(np.mean(values)), "max": float(max(values))}


def aggregation_record(step: Aggregation, fleet: Fleet, tally: Tally, size: int) -> dict[str, Any]:
    """One metrics line per server step: numbers and counts only."""
    reported = [(m["train_loss"], w) for m, w in zip(step.metrics, step.weights, strict=True) if "train_loss" in m]
    train_loss = float(np.average([l for l, _ in reported], weights=[w for _, w in reported])) if reported else None
    up = [m.get("bytes_up", wire.dense_bytes(size)) for m in step.metrics]
    return {
        "round": step.version,
        "version": step.version,
        "policy": "fedbuff",
        "sim_seconds": fleet.now,
        "cohort": len(step.clients),
        "accepted": len(step.clients),
        "failed": 0,
        "refused": tally.refused,  # past policy.max_staleness since the last step
        "refused_total": fleet.refused,
        "dispatched": tally.dispatched,
        "in_flight": len(fleet.in_flight),
        "staleness": spread(step.staleness),
        "max_client_share": max(step.weights) / sum(step.weights),
        "train_loss": train_loss,
        "train_tokens": reported_sum(step.metrics, "tokens"),
        "redacted": reported_sum(step.metrics, "redacted"),
        "bytes_down": wire.dense_bytes(size) * tally.dispatched,
        "bytes_up": int(sum(up)),
        "seconds": round(time.perf_counter() - tally.started, 3),
    }


def is_eval_step(version: int, every: int, last: int) -> bool:
    return version % every == 0 or version == last


def simulate_fedbuff(
    sim: Simulation,
    reporter: Reporter | None = None,
    on_record: Callable[[dict[str, Any], ServerState], None] | None = None,
    private_state: dict[str, np.ndarray] | None = None,
) -> RunResult:
    """Run FedBuff until federation.rounds server steps; `on_record(record, state)` sees each step's line."""
    check_policy_combinations(sim.config)
    reporter = reporter or SilentReporter()
    policy, steps = sim.config.policy, sim.config.federation.rounds
    private = {} if private_state is None else private_state
    initial = initial_state(sim.adapter.initial_shared, sim.pipeline)
    buffer = new_buffer(initial, sim.pipeline, buffer_policy(policy))
    fleet = make_fleet(sim)
    if sim.config.monitoring.enabled:
        log.info("monitoring's per-round review does not run under policy.kind = 'fedbuff' yet")
    base_eval, base_sites = evaluate_global(sim, initial)
    reporter.evaluated("base", base_eval)
    result = RunResult(initial, base_eval, base_eval, base_sites=base_sites, final_sites=base_sites)
    trainer = make_lora_trainer(sim, on_step=reporter.step_done)
    tally = Tally()
    reporter.run_started(steps)
    reporter.round_started(1, policy.buffer_size)
    while buffer.server.rounds_done < steps:
        with single_thread_blas():  # client work and folds at one BLAS thread, as in the synchronous engine
            refill(sim, fleet, buffer.server, trainer, private, reporter, tally)
            step = receive(fleet, buffer, tally, reporter)
        if step is None:
            continue
        record = aggregation_record(step, fleet, tally, buffer.server.global_vector.size)
        record.update(privacy_fields(sim, buffer.server))
        if is_eval_step(step.version, policy.eval_every, steps):
            evaluation, sites = evaluate_global(sim, buffer.server)
            record["eval"] = evaluation.as_dict()
            if sites:
                record["sites"] = site_summary(sites)
            result.final_eval, result.final_sites = evaluation, sites
        reporter.round_done(record)  # every step moves the rounds bar; perplexity where the line has an evaluation
        result.state = buffer.server
        result.records.append(record)
        if on_record is not None:
            on_record(record, buffer.server)
        tally = Tally()
        if buffer.server.rounds_done < steps:
            reporter.round_started(buffer.server.rounds_done + 1, policy.buffer_size)
    return result
