"""The compared methods, each trained from the same initial adapter on the same budget.

Centralized and local-only training call the client's own training loop (client.train), so
they differ from FedAvg only in what data one optimizer sees and for how long; the
federated methods run the ordinary simulation engine with one configuration each. One
base model and one adapter serve every method: each starts by writing the adapter's
initial vectors back, so nothing is reloaded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedlm.assembly import make_update_path
from fedlm.client.schedule import round_lr_factors
from fedlm.client.train import LocalResult, LossFn, local_batch_order, run_task, train_local
from fedlm.config import ClientSettings, RunConfig
from fedlm.core.rng import derive_seed, make_rng
from fedlm.core.types import Task
from fedlm.data.blocks import Blocks, concat_blocks, empty_blocks, iter_batches
from fedlm.eval.metrics import EvalResult
from fedlm.eval.slices import join_blocks
from fedlm.experiment.settings import Budget
from fedlm.models.lora import Adapter
from fedlm.sim.engine import simulate
from fedlm.sim.events import SilentReporter
from fedlm.sim.setup import Simulation
from fedlm.work import EvalSet
from fedlm.work.language_model import batch_loss

Log = Callable[[str], None]
SLICES = ("held_out", "own")


@dataclass
class Bench:
    """What every method shares: the loaded simulation, the training clients, the slices, the budget."""

    sim: Simulation
    clients: tuple[str, ...]  # the training clients, sorted
    held_out: EvalSet  # held-out speakers' test samples (and questions about them)
    own: dict[str, Blocks]  # the training clients' own test samples, by client
    own_questions: tuple  # multiple-choice questions about the training clients' own test samples
    budget: Budget

    @property
    def seq_len(self) -> int:
        return self.sim.config.data.seq_len

    def own_set(self) -> EvalSet:
        return EvalSet(join_blocks(self.own, self.seq_len), self.own_questions)

    def evaluate(self, eval_set: EvalSet) -> EvalResult:
        """The adapter as it stands on `eval_set`, scored by the run's client work."""
        return self.sim.work.evaluate(self.sim.adapter.model, eval_set)


@dataclass
class MethodResult:
    name: str
    slices: dict[str, EvalResult]
    sequences: int  # training sequences actually trained on
    seconds: float
    curve: list[dict[str, float]] = field(default_factory=list)  # federated: held-out after each round
    extra: dict[str, Any] = field(default_factory=dict)


def reset_adapter(adapter: Adapter) -> None:
    adapter.write_shared(adapter.initial_shared)
    adapter.write_private(adapter.initial_private)


def evaluate_slices(bench: Bench) -> dict[str, EvalResult]:
    """The adapter as it stands, on both slices."""
    return {"held_out": bench.evaluate(bench.held_out), "own": bench.evaluate(bench.own_set())}


def run_base(bench: Bench) -> MethodResult:
    started = time.perf_counter()
    reset_adapter(bench.sim.adapter)
    return MethodResult("base", evaluate_slices(bench), 0, time.perf_counter() - started)


def train_centralized(
    adapter: Adapter, blocks: Blocks, settings: ClientSettings, *, seed: int, name: str = "centralized",
    loss_fn: LossFn = batch_loss,
) -> LocalResult:
    """`settings.local_steps` steps over `blocks` from the initial adapter, with one optimizer.

    Batches and dropout are drawn as run_task draws those of a client called `name` in
    round 1, so one FedAvg round in which that client holds all the data must give the
    same adapter (tests/experiment checks it to float tolerance).
    """
    reset_adapter(adapter)
    order = local_batch_order(len(blocks), settings, make_rng(seed, "batches", 1, name))
    torch.manual_seed(derive_seed(seed, "dropout", 1, name))
    return train_local(adapter.model, adapter.trainable, iter_batches(blocks, order), settings, loss_fn=loss_fn,
                       lr_factors=round_lr_factors(settings, round=1, rounds=1))


def run_centralized(bench: Bench) -> MethodResult:
    """One optimizer on the union of the training clients' training text, for the whole budget."""
    started, sim, budget = time.perf_counter(), bench.sim, bench.budget
    union = concat_blocks([sim.train_blocks(c) for c in bench.clients], bench.seq_len)
    settings = dataclasses.replace(sim.config.client, local_steps=budget.centralized_steps, batch_size=budget.batch_size)
    result = train_centralized(sim.adapter, union, settings, seed=sim.config.run.seed, loss_fn=sim.work.loss)
    extra = {"steps": result.steps, "union_sequences": len(union), "train_loss": result.mean_loss}
    return MethodResult("centralized", evaluate_slices(bench), result.steps * budget.batch_size * settings.grad_accumulation,
                        time.perf_counter() - started, extra=extra)


def run_local_only(bench: Bench) -> MethodResult:
    """Each training client alone on its own text with an equal share of the budget.

    Its own lines, and the multiple-choice questions built from them, are scored with its own
    adapter. The held-out speakers' sequences and questions are dealt round-robin to the
    clients' adapters, so that figure is a local model's picked at random, at the cost of one
    evaluation of the slice.
    """
    started, sim, budget = time.perf_counter(), bench.sim, bench.budget
    adapter = sim.adapter
    settings = dataclasses.replace(sim.config.client, local_steps=budget.local_steps, batch_size=budget.local_batch_size)
    held_out_parts = bench.held_out.split_round_robin(len(bench.clients))
    own_questions = own_questions_by_client(bench)
    buffer = np.empty_like(adapter.initial_shared)
    totals = {name: EvalResult() for name in SLICES}
    sequences = 0
    for client, held_out in zip(bench.clients, held_out_parts, strict=True):
        update = run_task(
            adapter, Task(round=1, version=0, client_id=client), global_vector=adapter.initial_shared,
            private_vector=adapter.initial_private.copy(), train_blocks=sim.train_blocks(client),
            settings=settings, seed=sim.config.run.seed, out=buffer, loss_fn=sim.work.loss, rounds=1,
        )
        sequences += int(update.metrics["steps"]) * settings.batch_size * settings.grad_accumulation
        adapter.write_shared(adapter.initial_shared + update.vector)  # the client's trained adapter
        totals["held_out"] = totals["held_out"] + bench.evaluate(held_out)
        own_blocks = bench.own.get(client, empty_blocks(bench.seq_len))
        totals["own"] = totals["own"] + bench.evaluate(EvalSet(own_blocks, own_questions[client]))
    extra = {"clients": len(bench.clients), "steps_per_client": budget.local_steps, "batch_size": settings.batch_size}
    return MethodResult("local_only", totals, sequences, time.perf_counter() - started, extra=extra)


def own_questions_by_client(bench: Bench) -> dict[str, tuple]:
    """Each training client's own-slice questions: those built from its samples, plus a round-robin share of
    the questions that belong to no client (a user's own multiple-choice file)."""
    parts = len(bench.clients)
    unowned = [q for q in bench.own_questions if not q.owner]
    return {c: tuple(q for q in bench.own_questions if q.owner == c) + tuple(unowned[i::parts])
            for i, c in enumerate(bench.clients)}


class RoundLog(SilentReporter):
    """Says one line a round, so a long comparison shows it is alive."""

    def __init__(self, name: str, log: Log) -> None:
        self.name, self.log = name, log

    def round_done(self, record: dict[str, Any]) -> None:
        scores = record["eval"]
        choice = f", multiple choice {scores['choice_accuracy']:.3f}" if "choice_accuracy" in scores else ""
        self.log(f"  {self.name} round {record['round']}: held-out perplexity {scores['perplexity']:.2f}{choice} "
                 f"({record['seconds']:.0f} s)")


def federated_simulation(sim: Simulation, config: RunConfig, population: tuple[str, ...]) -> Simulation:
    """`sim` with another configuration and population: same model, adapter, data and token cache."""
    _, pipeline = make_update_path(config, sim.adapter.shared_spec, len(population))
    return dataclasses.replace(sim, config=config, population=population, pipeline=pipeline, residuals={})


def run_federated(bench: Bench, name: str, config: RunConfig, log: Log) -> MethodResult:
    """The simulation engine over the training clients; held-out perplexity after every round."""
    started = time.perf_counter()
    sim = federated_simulation(bench.sim, config, bench.clients)
    reset_adapter(sim.adapter)
    result = simulate(sim, RoundLog(name, log))
    sim.adapter.write_shared(result.state.global_vector)
    own = bench.evaluate(bench.own_set())
    slices = {"held_out": result.final_eval, "own": own}  # the engine scored the held-out slice after the last round
    per_client = config.client.local_steps * config.client.batch_size * config.client.grad_accumulation
    curve, sequences = [], 0
    for record in result.records:
        sequences += record["accepted"] * per_client
        point = {"round": record["round"], "sequences": sequences, "loss": record["eval"]["loss"],
                 "perplexity": record["eval"]["perplexity"]}
        if "choice_accuracy" in record["eval"]:
            point["choice_accuracy"] = record["eval"]["choice_accuracy"]
        curve.append(point)
    last = result.records[-1] if result.records else {}
    extra = {k: last[k] for k in ("epsilon", "delta", "noise_multiplier", "clip_norm", "bytes_up_per_client", "up_vs_full_model") if k in last}
    extra.update(rounds=len(result.records), pipeline=sim.pipeline.describe())
    if result.stop_reason:
        extra["stop_reason"] = result.stop_reason
    return MethodResult(name, slices, sequences, time.perf_counter() - started, curve, extra)
