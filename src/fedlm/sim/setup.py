"""Everything a simulation needs, loaded once: client work, base model, adapter, federated data, eval set."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from fedlm.assembly import Assembly, assemble
from fedlm.config import RunConfig
from fedlm.core.rng import make_rng
from fedlm.data.blocks import Blocks
from fedlm.data.types import FederatedDataset
from fedlm.models.base import BaseModel
from fedlm.models.lora import Adapter
from fedlm.updates.pipeline import Pipeline
from fedlm.work import ClientWork, EvalSet, make_work

log = logging.getLogger(__name__)


@dataclass
class Simulation:
    config: RunConfig
    work: ClientWork
    base: BaseModel
    adapter: Adapter
    dataset: FederatedDataset
    population: tuple[str, ...]  # clients that may be sampled to train
    eval_clients: tuple[str, ...]
    eval_set: EvalSet
    pipeline: Pipeline
    full_model_bytes: int  # the base model's weights in float32: what sending the whole model would cost
    train_cache: dict[str, Blocks] = field(default_factory=dict)
    residuals: dict[str, np.ndarray] = field(default_factory=dict)  # top-k error feedback, client-side state
    data_counts: dict[str, int] = field(default_factory=dict)  # samples, sequences, truncated, dropped (clients tokenized so far)

    def train_blocks(self, client_id: str) -> Blocks:
        """A client's training samples, tokenized by the client work on first use (see `encode_population`).

        A client left with no sequence is refused before anything is counted or cached.
        """
        if client_id not in self.train_cache:
            encoded = self.work.encode(self.base.tokenizer, self.dataset.get(client_id).train)
            if len(encoded.blocks) == 0:
                raise ValueError(f"client {client_id!r} has no training sequence left: its {encoded.samples} samples were "
                                 f"all longer than data.seq_len = {self.config.data.seq_len} and data.overlong = 'drop' "
                                 "left them out; raise data.seq_len or use data.overlong = 'truncate'")
            for key, value in encoded.counts().items():
                self.data_counts[key] = self.data_counts.get(key, 0) + value
            self.train_cache[client_id] = encoded.blocks
        return self.train_cache[client_id]

    def encode_population(self) -> None:
        """Tokenize every training client now, so bad data stops the run before round 1 and the counts are whole."""
        for client_id in self.population:
            self.train_blocks(client_id)
        counts = self.data_counts
        if counts.get("truncated") or counts.get("dropped"):
            log.info("training data: %d samples of %d clients; %d cut at data.seq_len = %d, %d dropped (data.overlong)",
                     counts["samples"], len(self.population), counts["truncated"], self.config.data.seq_len, counts["dropped"])

    def evaluate(self):
        """The adapter as it stands, on the evaluation set (fedlm.eval.metrics.EvalResult)."""
        return self.work.evaluate(self.adapter.model, self.eval_set)


def load_dataset(config: RunConfig) -> FederatedDataset:
    return make_work(config).load_federation()


def split_population(dataset: FederatedDataset, config: RunConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training population, evaluation clients): a seeded choice of clients that have test samples."""
    ids = dataset.client_ids()
    with_test = [c for c in ids if dataset.get(c).test]
    needed = config.eval.clients + (1 if config.eval.held_out_clients else 0)
    if len(with_test) < config.eval.clients or len(ids) < needed:
        raise ValueError(
            f"data set {dataset.name!r} has {len(ids)} clients ({len(with_test)} with test samples): "
            f"too few for eval.clients = {config.eval.clients}"
            + (" plus at least one training client" if config.eval.held_out_clients else "")
        )
    rng = make_rng(config.run.seed, "eval-clients")
    chosen = tuple(sorted(with_test[i] for i in rng.choice(len(with_test), config.eval.clients, replace=False)))
    population = tuple(c for c in ids if c not in chosen) if config.eval.held_out_clients else ids
    return population, chosen


def build_eval_set(work: ClientWork, tokenizer, dataset: FederatedDataset, clients: tuple[str, ...], config: RunConfig) -> EvalSet:
    """The evaluation clients' test samples, encoded by the client work and capped at eval.max_sequences."""
    return work.make_eval_set(tokenizer, {c: dataset.get(c).test for c in clients}, max_sequences=config.eval.max_sequences)


def prepare(config: RunConfig, *, encode_all: bool = True) -> Simulation:
    """Load the data and the run's assembly (model, adapter at global version 0, pipeline).

    The data and the update pipeline are checked before the model loads, so a data set or a
    combination that cannot work fails in a second, not after the load. With `encode_all`,
    where the client work's encoding can refuse, cut or drop samples (instruction), every
    training client is tokenized before round 1; a worker process leaves it to the clients
    it is given.
    """
    work = make_work(config)
    dataset = work.load_federation()
    population, eval_clients = split_population(dataset, config)
    parts: Assembly = assemble(config, population=len(population), work=work)
    eval_set = build_eval_set(work, parts.base.tokenizer, dataset, eval_clients, config)
    adapter = parts.adapter
    full_model_bytes = 4 * sum(p.numel() * (2 if p.dtype == torch.uint8 else 1)  # 4-bit weights: two to a byte
                               for n, p in adapter.model.named_parameters() if "lora_" not in n)
    sim = Simulation(config, work, parts.base, adapter, dataset, population, eval_clients, eval_set, parts.pipeline,
                     full_model_bytes)
    if encode_all and work.encodes_up_front:
        sim.encode_population()
    return sim
