"""Local LoRA training as an executor's trainer: in this process, or built once inside each worker."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np

from fedlm.client.train import StepCallback, run_task
from fedlm.config import RunConfig
from fedlm.core.types import Update
from fedlm.data.redaction import redacted_per_client
from fedlm.models.lora import client_rank
from fedlm.sim.cohort import ClientJob, Executor, Trainer
from fedlm.sim.events import Reporter
from fedlm.sim.executors import make_executor
from fedlm.sim.setup import Simulation, prepare
from fedlm.updates.client import make_encoder


def make_lora_trainer(sim: Simulation, on_step: StepCallback | None = None) -> Trainer:
    """Train a job's client on `sim`'s one adapter (see client.train.run_task), encoding its update in place."""
    settings, lora, seed = sim.config.client, sim.config.lora, sim.config.run.seed
    encode = make_encoder(sim.pipeline, seed=seed)
    redacted = redacted_per_client(sim.dataset, sim.config)  # counts only, reported as the `redacted` metric

    def train(job: ClientJob, global_vector: np.ndarray, out: np.ndarray) -> Update:
        task = job.task
        rank = client_rank(task.client_id, lora.client_ranks, lora.r)
        update = run_task(
            sim.adapter, task, global_vector=global_vector, private_vector=job.private,
            train_blocks=sim.train_blocks(task.client_id), settings=settings, seed=seed, out=out,
            on_step=on_step, rank=rank if rank < lora.r else None, encode=encode, residual=job.residual,
            loss_fn=sim.work.loss, rounds=sim.config.federation.rounds,
        )
        if task.client_id in redacted:
            update.metrics["redacted"] = float(redacted[task.client_id])
        return update

    return train


def quiet_libraries() -> None:
    """In a worker, as the command line does in the main process: no deprecation notes, no load bars."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@dataclass(frozen=True)
class LoraTrainerFactory:
    """Loads the run's model and data once in a worker (sim.setup.prepare) and trains there."""

    config: RunConfig
    preload: tuple[str, ...] = ("fedlm.sim.trainers",)

    def __call__(self, threads: int) -> Trainer:
        quiet_libraries()
        config = self.config
        if threads and not config.model.threads:
            config = replace(config, model=replace(config.model, threads=threads))
        return make_lora_trainer(prepare(config, encode_all=False, report=False))  # the main process checked and counted every client


def make_sim_executor(sim: Simulation, reporter: Reporter) -> Executor:
    """The executor [simulation] names; the serial one trains on `sim`'s own model, with progress."""
    return make_executor(
        sim.config.simulation, LoraTrainerFactory(sim.config), size=sim.adapter.shared_spec.size,
        serial=lambda: make_lora_trainer(sim, on_step=reporter.step_done),
    )
