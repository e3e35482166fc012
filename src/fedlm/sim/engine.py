"""The in-process simulation: drive the round engine and local training in one process.

One base model, one adapter: a client's turn writes the global vector (and its own
private parameters) into the adapter in place, trains, and reads back the delta into a
reused buffer that the round folds before the next client. Nothing is copied or pickled
per client. Clients in a cohort run in client-id order, so a seed fixes the result.
[simulation] executor = "processes" or "ray" spreads the clients over workers, each with
its own model (see sim.cohort); their updates are still folded in client-id order.
Under policy.kind = "quorum" (and "sync" with the virtual clock set) each round is timed on the
simulated clock (sim.virtual_clock): the cohort clients that would miss a quorum round are failed
before anyone trains, and every metrics line carries the simulated time so far (`sim_seconds`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedlm.core.rng import make_rng
from fedlm.core.types import Task, Update
from fedlm.updates import wire
from fedlm.eval.metrics import EvalResult
from fedlm.privacy.release import reported_sum
from fedlm.eval.sites import pooled, site_summary
from fedlm.monitoring.alerts import describe_alert
from fedlm.monitoring.history import MonitorHistory
from fedlm.monitoring.review import per_client_unavailable, review_round
from fedlm.monitoring.sketch import Sketcher, make_sketcher
from fedlm.monitoring.watch import RoundWatch, observe, open_watch
from fedlm.server.rounds import (
    OpenRound,
    abandon_round,
    RoundOutcome,
    ServerState,
    accept_update,
    close_round,
    dominance_warning,
    clipped_share,
    signal_to_noise,
    weight_share,
    initial_state,
    make_tasks,
    mark_failed,
    open_round,
)
from fedlm.server.selection import cyclic_cohort, cyclic_groups, sample_fixed, sample_poisson
from fedlm.sim.events import Reporter, SilentReporter
from fedlm.sim.cohort import ClientJob, Executor, make_jobs
from fedlm.sim.secure_round import ClientTurn, secure_round
from fedlm.sim.setup import Simulation
from fedlm.sim.threads import single_thread_blas
from fedlm.sim.trainers import make_lora_trainer, make_sim_executor
from fedlm.sim.virtual_clock import RoundClock, slow_clients

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    state: ServerState
    base_eval: EvalResult
    final_eval: EvalResult
    records: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None  # why the run ended before its last round (privacy budget)
    base_sites: dict[str, EvalResult] = field(default_factory=dict)  # per_site evaluation: each site's figures
    final_sites: dict[str, EvalResult] = field(default_factory=dict)


def sample_cohort(sim: Simulation, round: int) -> tuple[str, ...]:
    fed = sim.config.federation
    if fed.sampling == "cyclic":  # the same seeded split every round: a client trains once every `groups` rounds
        groups = cyclic_groups(sim.population, fed.groups, sim.config.run.seed)
        return cyclic_cohort(groups, round)
    rng = make_rng(sim.config.run.seed, "cohort", round)
    if fed.sampling == "poisson":
        return sample_poisson(sim.population, fed.sample_rate, rng)
    return sample_fixed(sim.population, fed.clients_per_round, rng)


def evaluate_global(sim: Simulation, state: ServerState) -> tuple[EvalResult, dict[str, EvalResult]]:
    """The global adapter of `state` on the evaluation set: the pooled figures and, per site, each site's."""
    sim.adapter.write_shared(state.global_vector)
    sim.adapter.write_private(sim.adapter.initial_private)
    if sim.site_sets:
        sites = sim.evaluate_sites()
        return pooled(sites) + sim.evaluate_shared(), sites
    return sim.evaluate(), {}


def secure_turn(sim: Simulation, state: ServerState, jobs: list[ClientJob], reporter: Reporter) -> ClientTurn:
    """A cohort client's turn on this process's model, as the secure round asks for it."""
    trainer = make_lora_trainer(sim, on_step=reporter.step_done)
    by_client = {job.task.client_id: job for job in jobs}

    def turn(task: Task, out: np.ndarray) -> Update:
        job = by_client[task.client_id]
        reporter.client_started(task.round, job.index, sim.config.client.local_steps)
        update = trainer(job, state.global_vector, out)
        reporter.client_done(task.round, job.index)
        return update

    return turn


def train_cohort(
    sim: Simulation, state: ServerState, rnd: OpenRound, private: dict[str, np.ndarray], reporter: Reporter, executor: Executor,
    watch: RoundWatch | None = None,
) -> bool:
    """Every cohort client trains on `executor`; updates are folded in cohort order as they come back (and, with a
    `watch`, each one's norm and sketch noted for monitoring).

    Under secure aggregation (in this process only) the round engine sees only the recovered sum; False when
    that sum could not be recovered (the round is abandoned).
    """
    residuals = sim.residuals if sim.config.compression.sparsify == "top_k" else None
    tasks = [task for task in make_tasks(rnd) if task.client_id not in rnd.failed]  # late under a quorum: not trained
    jobs = make_jobs(tasks, private, sim.adapter.initial_private, residuals, state.global_vector.size)
    if rnd.pipeline.mask is not None:
        turn = secure_turn(sim, state, jobs, reporter)
        return secure_round(rnd, state.global_vector.size, sim.config.run.seed, turn) is not None
    fold_cohort(rnd, state.global_vector, jobs, executor, reporter, steps=sim.config.client.local_steps, watch=watch)
    return True


class RoundSink:
    """Where an executor's results go: each update folded into the open round (and noted by the monitoring watch,
    if any, once accepted), a dead worker's client failed."""

    def __init__(self, rnd: OpenRound, reporter: Reporter, steps: int, watch: RoundWatch | None = None) -> None:
        self.rnd, self.reporter, self.steps, self.watch = rnd, reporter, steps, watch

    def started(self, job: ClientJob) -> None:
        self.reporter.client_started(self.rnd.round, job.index, self.steps)

    def delivered(self, job: ClientJob, update: Update) -> None:
        accept_update(self.rnd, update)
        if self.watch is not None:
            observe(self.watch, update.client_id, update.vector)
        self.reporter.client_done(self.rnd.round, job.index)

    def failed(self, job: ClientJob, reason: str) -> None:
        mark_failed(self.rnd, job.task.client_id)
        self.reporter.client_done(self.rnd.round, job.index)


def fold_cohort(
    rnd: OpenRound, global_vector: np.ndarray, jobs: list[ClientJob], executor: Executor,
    reporter: Reporter | None = None, *, steps: int = 0, watch: RoundWatch | None = None,
) -> None:
    """Run the cohort's jobs on `executor`, folding every update into `rnd` in cohort order.

    Per-client vector work (the client's delta and encoding, the server's checks and fold)
    runs with BLAS at one thread: memory-bound, and the same split in every executor.
    """
    with single_thread_blas():
        executor.run(jobs, global_vector, RoundSink(rnd, reporter or SilentReporter(), steps, watch))


def privacy_fields(sim: Simulation, state: ServerState) -> dict[str, Any]:
    plan = sim.pipeline.privacy
    fields: dict[str, Any] = {}
    if state.clip_norm:
        fields["clip_norm"] = state.clip_norm
    if plan is not None:
        fields.update(epsilon=plan.epsilon(state.ledger), delta=plan.delta, noise_multiplier=plan.noise_multiplier)
    return fields


def budget_stop(sim: Simulation, state: ServerState) -> str | None:
    """A message when the next round would take epsilon past privacy.target_epsilon, else None."""
    plan = sim.pipeline.privacy
    return None if plan is None else plan.stop_reason(state.ledger, state.rounds_done + 1)


def traffic(rnd: OpenRound, outcome: RoundOutcome, size: int, full_model_bytes: int) -> dict[str, Any]:
    """Bytes as they would go over the wire: the global adapter down, each encoded update up."""
    down = wire.dense_bytes(size)
    up = [rnd.metrics[c].get("bytes_up", down) for c in outcome.accepted]
    per_client_up = float(np.mean(up)) if up else 0.0
    return {
        "bytes_down": down * len(rnd.cohort),
        "bytes_up": int(sum(up)),
        "bytes_down_per_client": down,
        "bytes_up_per_client": per_client_up,
        "up_vs_full_model": per_client_up / full_model_bytes,
    }


def round_record(rnd: OpenRound, outcome: RoundOutcome, result: EvalResult, seconds: float, size: int) -> dict[str, Any]:
    reported = [c for c, m in rnd.metrics.items() if "train_loss" in m]
    losses = [rnd.metrics[c]["train_loss"] for c in reported]
    weights = [rnd.weights[c] for c in reported]
    train_loss = float(np.average(losses, weights=weights)) if losses else None
    return {
        "round": outcome.round,
        "version": outcome.version,
        "cohort": len(rnd.cohort),
        "accepted": len(outcome.accepted),
        "failed": len(outcome.failed),
        "max_client_share": weight_share(rnd),
        "clipped_share": clipped_share(rnd),  # None without clipping or under DP
        **signal_to_noise(rnd, outcome),  # under DP: noise_norm and the measured signal_to_noise of the released mean
        "train_loss": train_loss,
        "train_tokens": reported_sum((rnd.metrics[c] for c in outcome.accepted), "tokens"),  # None under DP
        "redacted": reported_sum((rnd.metrics[c] for c in outcome.accepted), "redacted"),  # PII values replaced; None if off or DP
        "eval": result.as_dict(),
        "seconds": round(seconds, 3),
    }


def round_clock(sim: Simulation, rounds_done: int) -> RoundClock | None:
    """The simulated clock of a timed run (policy.timed), wound on past the `rounds_done` rounds already run; else None."""
    policy = sim.config.policy
    if not policy.timed:
        return None
    slow = slow_clients(sim.population, share=policy.slow_share, seed=sim.config.run.seed)
    clock = RoundClock(policy, sim.config.run.seed, sim.config.client.local_steps, slow)
    for round in range(1, rounds_done + 1):  # a round's timing depends only on seed, cohort and round
        clock.advance(sample_cohort(sim, round), round)
    return clock


def time_round(clock: RoundClock | None, rnd: OpenRound) -> dict[str, Any]:
    """Fail the cohort clients that miss the round on the simulated clock; the fields its metrics line gets."""
    if clock is None:
        return {}
    timing = clock.advance(rnd.cohort, rnd.round)
    for client in sorted(timing.late):
        mark_failed(rnd, client)
    return {"policy": clock.settings.kind, "sim_seconds": clock.now, "late": len(timing.late)}


def why_no_per_client(sim: Simulation) -> str | None:
    """Why this run may not compute per-client update figures (secure aggregation, DP), or None."""
    return per_client_unavailable(secure=sim.pipeline.mask is not None, noise_multiplier=sim.config.privacy.noise_multiplier)


def monitoring_sketcher(sim: Simulation) -> Sketcher | None:
    """The run's update sketcher, or None where monitoring is off or per-client figures may not be computed."""
    if not sim.config.monitoring.enabled or why_no_per_client(sim) is not None:
        return None
    return make_sketcher(sim.adapter.shared_spec.size, sim.config.run.seed)


def monitor_round(sim: Simulation, record: dict[str, Any], watch: RoundWatch | None, history: MonitorHistory) -> MonitorHistory:
    """Add the round's "monitor" object and "alerts" list to its metrics `record`, log each alert as a warning,
    and return the history the next round is judged against."""
    review = review_round(record, watch=watch, history=history, settings=sim.config.monitoring,
                          expected=record["cohort"], unavailable=why_no_per_client(sim))
    record["monitor"], record["alerts"] = review.monitor, review.alerts
    for alert in review.alerts:
        log.warning(describe_alert(alert))
    return review.history


def simulate(
    sim: Simulation,
    reporter: Reporter | None = None,
    on_record: Callable[[dict[str, Any], ServerState], None] | None = None,
    private_state: dict[str, np.ndarray] | None = None,
    start: ServerState | None = None,
    monitor_history: MonitorHistory | None = None,
    executor: Executor | None = None,
) -> RunResult:
    """Run rounds until federation.rounds (or the privacy budget); `on_record(record, state)` sees each.

    `private_state` maps client id to that client's private parameters: client-side
    state, which in the service never leaves the client. `start` resumes from a saved state;
    `monitor_history` is then the monitoring history of the rounds already run
    (monitoring.history.history_from_records over their metrics lines). `executor` runs the clients instead
    of the one [simulation] names (the caller keeps it and closes it).
    """
    reporter = reporter or SilentReporter()
    initial = initial_state(sim.adapter.initial_shared, sim.pipeline)
    state = start if start is not None else initial
    private = {} if private_state is None else private_state
    base_eval, base_sites = evaluate_global(sim, initial)
    reporter.evaluated("base", base_eval)
    final_eval, final_sites = (base_eval, base_sites) if start is None else evaluate_global(sim, state)
    result = RunResult(state, base_eval, final_eval, base_sites=base_sites, final_sites=final_sites)
    reporter.run_started(sim.config.federation.rounds - state.rounds_done)
    if sim.pipeline.needs_stack:
        log.info("the %s aggregator keeps every update of a round in memory: cohort x %d floats",
                 sim.pipeline.aggregator.name, state.global_vector.size)
    own_executor = executor is None
    executor = make_sim_executor(sim, reporter) if executor is None else executor
    sketcher, history = monitoring_sketcher(sim), monitor_history or MonitorHistory()
    clock = round_clock(sim, state.rounds_done)
    try:
        for round in range(state.rounds_done + 1, sim.config.federation.rounds + 1):
            result.stop_reason = budget_stop(sim, state)
            if result.stop_reason:
                break
            started = time.perf_counter()
            rnd = open_round(state, sample_cohort(sim, round), sim.pipeline)
            reporter.round_started(round, len(rnd.cohort))
            timed = time_round(clock, rnd)
            watch = open_watch(sketcher, len(rnd.cohort)) if sketcher is not None else None
            recovered = train_cohort(sim, state, rnd, private, reporter, executor, watch)
            state, outcome = close_round(state, rnd) if recovered else abandon_round(state, rnd)
            if (warning := dominance_warning(rnd)) is not None:
                log.warning(warning)
            evaluation, sites = evaluate_global(sim, state)
            record = round_record(rnd, outcome, evaluation, time.perf_counter() - started, state.global_vector.size)
            if sites:
                record["sites"] = site_summary(sites)
            record.update(traffic(rnd, outcome, state.global_vector.size, sim.full_model_bytes))
            record.update(privacy_fields(sim, state))
            record.update(timed)
            if sim.config.monitoring.enabled:
                history = monitor_round(sim, record, watch, history)
            result.state, result.final_eval, result.final_sites = state, evaluation, sites
            result.records.append(record)
            reporter.round_done(record)
            if on_record is not None:
                on_record(record, state)
    finally:
        if own_executor:
            executor.close()
    return result
