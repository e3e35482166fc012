"""The in-process simulation: drive the round engine and local training in one process.

One base model, one adapter: a client's turn writes the global vector (and its own
private parameters) into the adapter in place, trains, and reads back the delta into a
reused buffer that the round folds before the next client. Nothing is copied or pickled
per client. Clients in a cohort run in client-id order, so a seed fixes the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedlm.client.train import run_task
from fedlm.core.rng import make_rng
from fedlm.models.lora import client_rank
from fedlm.updates import wire
from fedlm.updates.client import make_encoder
from fedlm.eval.metrics import EvalResult, evaluate
from fedlm.server.rounds import (
    OpenRound,
    RoundOutcome,
    ServerState,
    accept_update,
    close_round,
    initial_state,
    make_tasks,
    open_round,
)
from fedlm.server.selection import sample_fixed, sample_poisson
from fedlm.sim.events import Reporter, SilentReporter
from fedlm.sim.setup import Simulation


@dataclass
class RunResult:
    state: ServerState
    base_eval: EvalResult
    final_eval: EvalResult
    records: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None  # why the run ended before its last round (privacy budget)


def sample_cohort(sim: Simulation, round: int) -> tuple[str, ...]:
    fed = sim.config.federation
    rng = make_rng(sim.config.run.seed, "cohort", round)
    if fed.sampling == "poisson":
        return sample_poisson(sim.population, fed.sample_rate, rng)
    return sample_fixed(sim.population, fed.clients_per_round, rng)


def evaluate_global(sim: Simulation, state: ServerState) -> EvalResult:
    sim.adapter.write_shared(state.global_vector)
    sim.adapter.write_private(sim.adapter.initial_private)
    return evaluate(sim.adapter.model, sim.eval_blocks, batch_size=sim.config.eval.batch_size)


def train_cohort(sim: Simulation, state: ServerState, rnd: OpenRound, private: dict[str, np.ndarray], reporter: Reporter) -> None:
    """Every cohort client trains in turn; each update is folded before the next one starts."""
    buffer = np.empty_like(state.global_vector)
    settings, lora = sim.config.client, sim.config.lora
    encode = make_encoder(sim.pipeline, seed=sim.config.run.seed)
    feedback = sim.config.compression.sparsify == "top_k"
    for index, task in enumerate(make_tasks(rnd)):
        reporter.client_started(rnd.round, index, settings.local_steps)
        own = private.setdefault(task.client_id, sim.adapter.initial_private.copy())
        residual = sim.residuals.setdefault(task.client_id, np.zeros_like(buffer)) if feedback else None
        rank = client_rank(task.client_id, lora.client_ranks, lora.r)
        update = run_task(
            sim.adapter, task, global_vector=state.global_vector, private_vector=own,
            train_blocks=sim.train_blocks(task.client_id), settings=settings,
            seed=sim.config.run.seed, out=buffer, on_step=reporter.step_done,
            rank=rank if rank < lora.r else None, encode=encode, residual=residual,
        )
        accept_update(rnd, update)
        reporter.client_done(rnd.round, index)


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
    if plan is None or plan.allows_next_round(state.ledger):
        return None
    after = state.ledger.epsilon_if(plan.round_event(), delta=plan.delta, accountant=plan.accountant)
    return (
        f"privacy budget reached: round {state.rounds_done + 1} would take epsilon from "
        f"{plan.epsilon(state.ledger):.3f} to {after:.3f}, past privacy.target_epsilon = {plan.target_epsilon}"
    )


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
        "train_loss": train_loss,
        "eval": result.as_dict(),
        "seconds": round(seconds, 3),
    }


def simulate(
    sim: Simulation,
    reporter: Reporter | None = None,
    on_record: Callable[[dict[str, Any], ServerState], None] | None = None,
    private_state: dict[str, np.ndarray] | None = None,
    start: ServerState | None = None,
) -> RunResult:
    """Run rounds until federation.rounds (or the privacy budget); `on_record(record, state)` sees each.

    `private_state` maps client id to that client's private parameters: client-side
    state, which in the service never leaves the client. `start` resumes from a saved state.
    """
    reporter = reporter or SilentReporter()
    initial = initial_state(sim.adapter.initial_shared, sim.pipeline)
    state = start if start is not None else initial
    private = {} if private_state is None else private_state
    base_eval = evaluate_global(sim, initial)
    reporter.evaluated("base", base_eval)
    final_eval = base_eval if start is None else evaluate_global(sim, state)
    result = RunResult(state, base_eval, final_eval)
    reporter.run_started(sim.config.federation.rounds - state.rounds_done)
    for round in range(state.rounds_done + 1, sim.config.federation.rounds + 1):
        result.stop_reason = budget_stop(sim, state)
        if result.stop_reason:
            break
        started = time.perf_counter()
        rnd = open_round(state, sample_cohort(sim, round), sim.pipeline)
        reporter.round_started(round, len(rnd.cohort))
        train_cohort(sim, state, rnd, private, reporter)
        state, outcome = close_round(state, rnd)
        evaluation = evaluate_global(sim, state)
        record = round_record(rnd, outcome, evaluation, time.perf_counter() - started, state.global_vector.size)
        record.update(traffic(rnd, outcome, state.global_vector.size, sim.full_model_bytes))
        record.update(privacy_fields(sim, state))
        result.state, result.final_eval = state, evaluation
        result.records.append(record)
        reporter.round_done(record)
        if on_record is not None:
            on_record(record, state)
    return result
