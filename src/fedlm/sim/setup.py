"""Everything a simulation needs, loaded once: base model, adapter, federated data, eval set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedlm.config import RunConfig
from fedlm.core.rng import make_rng
from fedlm.data.blocks import Blocks, concat_blocks, pack_texts
from fedlm.data.folders import load_folder
from fedlm.data.shakespeare import load_shakespeare
from fedlm.data.types import FederatedDataset
from fedlm.models.base import BaseModel, load_base_model
from fedlm.core.vectors import make_spec
from fedlm.models.lora import Adapter, attach_lora
from fedlm.privacy.plan import PrivacyPlan, make_privacy_plan
from fedlm.updates.build import build_pipeline
from fedlm.updates.pipeline import Pipeline


@dataclass
class Simulation:
    config: RunConfig
    base: BaseModel
    adapter: Adapter
    dataset: FederatedDataset
    population: tuple[str, ...]  # clients that may be sampled to train
    eval_clients: tuple[str, ...]
    eval_blocks: Blocks
    pipeline: Pipeline
    full_model_bytes: int  # the base model's weights in float32: what sending the whole model would cost
    train_cache: dict[str, Blocks] = field(default_factory=dict)
    residuals: dict[str, np.ndarray] = field(default_factory=dict)  # top-k error feedback, client-side state

    def train_blocks(self, client_id: str) -> Blocks:
        """A client's training text, tokenized and packed on first use."""
        if client_id not in self.train_cache:
            texts = self.dataset.get(client_id).train
            self.train_cache[client_id] = pack_texts(self.base.tokenizer, texts, self.config.data.seq_len)
        return self.train_cache[client_id]


def load_dataset(config: RunConfig) -> FederatedDataset:
    data, seed = config.data, config.run.seed
    if data.source == "folder":
        return load_folder(Path(data.path), test_fraction=data.test_fraction, seed=seed)
    return load_shakespeare(min_lines=data.min_lines, test_fraction=data.test_fraction, seed=seed)


def split_population(dataset: FederatedDataset, config: RunConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training population, evaluation clients): a seeded choice of clients that have test text."""
    ids = dataset.client_ids()
    with_test = [c for c in ids if dataset.get(c).test]
    needed = config.eval.clients + (1 if config.eval.held_out_clients else 0)
    if len(with_test) < config.eval.clients or len(ids) < needed:
        raise ValueError(
            f"data set {dataset.name!r} has {len(ids)} clients ({len(with_test)} with test text): "
            f"too few for eval.clients = {config.eval.clients}"
            + (" plus at least one training client" if config.eval.held_out_clients else "")
        )
    rng = make_rng(config.run.seed, "eval-clients")
    chosen = tuple(sorted(with_test[i] for i in rng.choice(len(with_test), config.eval.clients, replace=False)))
    population = tuple(c for c in ids if c not in chosen) if config.eval.held_out_clients else ids
    return population, chosen


def build_eval_blocks(base: BaseModel, dataset: FederatedDataset, clients: tuple[str, ...], config: RunConfig) -> Blocks:
    seq_len = config.data.seq_len
    parts = [pack_texts(base.tokenizer, dataset.get(c).test, seq_len) for c in clients]
    return concat_blocks(parts, seq_len).head(config.eval.max_sequences)


def check_pipeline_settings(config: RunConfig, plan: PrivacyPlan | None, population: int) -> None:
    """Build the pipeline once on a dummy layout, to refuse bad combinations before the model loads."""
    dummy = make_spec([("lora_A", (1, 1)), ("lora_B", (1, 1))])
    build_pipeline(config.strategy, config.lora, dummy, plan, config.compression, config.secagg)
    check_krum_cohort(config, population)


def check_krum_cohort(config: RunConfig, population: int) -> None:
    """Krum needs a cohort of at least 2f + 3, known before any client trains."""
    strategy = config.strategy
    if strategy.aggregator not in ("krum", "multi_krum"):
        return
    if config.federation.sampling != "fixed":
        raise ValueError(f"strategy.aggregator = {strategy.aggregator!r} needs federation.sampling = 'fixed': "
                         "a Poisson cohort can be smaller than Krum's 2f + 3")
    cohort, f = min(config.federation.clients_per_round, population), strategy.num_byzantine
    if cohort < 2 * f + 3:
        raise ValueError(f"strategy.num_byzantine = {f} needs a cohort of at least {2 * f + 3}; "
                         f"federation.clients_per_round gives {cohort}")
    if strategy.krum_selected > cohort - f:
        raise ValueError(f"strategy.krum_selected = {strategy.krum_selected} exceeds cohort - f = {cohort - f}")


def prepare(config: RunConfig) -> Simulation:
    """Load the data and model named by `config` and attach a fresh adapter (global version 0).

    The update pipeline is checked before the model loads, so a combination that cannot
    work fails in a second, not after the load.
    """
    if config.model.threads:
        torch.set_num_threads(config.model.threads)
    dataset = load_dataset(config)
    population, eval_clients = split_population(dataset, config)
    plan = make_privacy_plan(config.privacy, config.federation, len(population))
    check_pipeline_settings(config, plan, len(population))
    base = load_base_model(config.model.name)
    adapter = attach_lora(base, config.lora, seed=config.run.seed)
    pipeline = build_pipeline(config.strategy, config.lora, adapter.shared_spec, plan, config.compression, config.secagg)
    eval_blocks = build_eval_blocks(base, dataset, eval_clients, config)
    full_model_bytes = 4 * sum(p.numel() for n, p in adapter.model.named_parameters() if "lora_" not in n)
    return Simulation(config, base, adapter, dataset, population, eval_clients, eval_blocks, pipeline, full_model_bytes)
